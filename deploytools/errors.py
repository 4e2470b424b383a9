"""One exception tree. Only the CLI entry point prints these and picks the exit code.

Every message says what failed, where (host, file:line, command) and what to do.
"""
from __future__ import annotations

# Exit codes (documented in README.md).
EXIT_OK = 0
EXIT_FAILED = 1  # deploy failed and was rolled back cleanly
EXIT_USAGE = 2  # bad usage or config: nothing touched
EXIT_UNRESTORED = 3  # failed and a host could not be restored: a human must look
EXIT_LOCKED = 4  # locked by another deploy


class DeployError(Exception):
    """Root of every error deploytools raises on purpose."""

    exit_code = EXIT_FAILED

    def __init__(self, message: str, *, host: str | None = None):
        super().__init__(message)
        self.message = message
        self.host = host

    def __str__(self) -> str:
        return f"{self.host}: {self.message}" if self.host else self.message


def errors_text(errors: dict[str, BaseException]) -> str:
    """Per-host failures, one indented `host: message` line each, for an error message."""
    return "\n".join(f"  {name}: {err.message if isinstance(err, DeployError) else err}"
                     for name, err in errors.items())


def fleet_failure(errors: dict[str, BaseException], message: str,
                  cls: type[DeployError] = DeployError) -> DeployError:
    """One error for failures on several hosts: a ConnectionFailed when every host was
    lost (not the release's fault: it is not marked rejected), else `cls`."""
    lost = all(isinstance(e, ConnectionFailed) for e in errors.values())
    return (ConnectionFailed if lost else cls)(message)


class UsageError(DeployError):
    """Bad command line: unknown task, service, host or option."""

    exit_code = EXIT_USAGE


class ConfigError(DeployError):
    """services.yaml is broken. Carries the file and line it points at."""

    exit_code = EXIT_USAGE

    def __init__(self, message: str, *, path: str | None = None, line: int | None = None):
        super().__init__(message)
        self.path = path
        self.line = line

    def __str__(self) -> str:
        where = self.path or "services.yaml"
        if self.line:
            where = f"{where}:{self.line}"
        return f"{where}: {self.message}"


class ConnectionFailed(DeployError):
    """A host could not be reached over SSH.

    `delivered` says whether the command in hand may have reached the host: False
    when the connection was refused or was already known dead before sending it (so
    the host is as it was), True when it broke while the command ran (unknown)."""

    def __init__(self, message: str, *, host: str | None = None, delivered: bool = True):
        super().__init__(message, host=host)
        self.delivered = delivered


class RemoteCommandError(DeployError):
    """A command on a host exited non-zero. Carries its output."""

    def __init__(self, message: str, *, host: str | None = None, command: str = "",
                 stdout: str = "", stderr: str = "", exited: int | None = None):
        super().__init__(message, host=host)
        self.command = command
        self.stdout = stdout
        self.stderr = stderr
        self.exited = exited


class StagingFailed(DeployError):
    """Preparing a release failed before anything was switched."""


class HealthGateFailed(DeployError):
    """A wave failed its readiness or error-rate gate; the deploy was rolled back."""


class RestoreFailed(DeployError):
    """A rollback could not bring a host back to a working release."""

    exit_code = EXIT_UNRESTORED


class PublishFailed(DeployError):
    """Every wave passed and the release is live, but the production branch or the
    date tag could not be moved: git and the fleet disagree until someone fixes it."""

    exit_code = EXIT_UNRESTORED


class PostDeployFailed(DeployError):
    """Every wave passed and the release is live, but a post-deploy migration failed:
    the schema was not contracted and nothing was tagged. The code stays live (it does
    not need the contraction); a human must fix the migration and run it."""

    exit_code = EXIT_UNRESTORED


class Interrupted(KeyboardInterrupt):
    """SIGINT, SIGTERM or SIGHUP reached a command that changes hosts (a CI runner
    cancelling its job sends SIGTERM). Handled like Ctrl-C: roll back, record, unlock."""

    def __init__(self, signal_name: str):
        super().__init__(signal_name)
        self.signal_name = signal_name

    def __str__(self) -> str:
        return f"interrupted by {self.signal_name}"


class LockedError(DeployError):
    """Another deploy holds the service's lock."""

    exit_code = EXIT_LOCKED
