"""The deploytools tasks. Each parses its arguments and calls one library function
with the session of the command line, which travels in invoke's context `c`.

    deploytools host:web-0 deploy:airship restart:airship     (classic syntax)
    deploytools -H web-0 deploy airship restart airship        (modern syntax)

Your own fabfile can import them, call them and wrap them; they then act in the
same session (host selection, --json, lock wait, connections) as the rest of
the command line:

    from invoke import task
    from deploytools.tasks import deploy

    @task
    def release(c):
        deploy(c, "airship")
        notify_chat("airship is out")
"""
from invoke import task

from deploytools import lazy

# Loaded when a task runs: listing the tasks or parsing a command line stays cheap.
monitor_mod = lazy.module("deploytools.monitor")
operations = lazy.module("deploytools.operations")
session = lazy.module("deploytools.session")

__all__ = ["stage", "host", "deploy", "restart", "rollback", "status", "setup", "history", "unlock",
           "smart_deploy", "plan", "migrate", "media", "monitor", "exec_"]


@task(help={"name": "a stage declared under stages: in services.yaml (e.g. staging)"})
def stage(c, name):
    """Select the stage (its hosts, roles, env, gate, rollout) for the tasks after it.

        deploytools stage:staging deploy:airship
    """
    session.of(c).select_stage(name)


@task(help={"names": "host names or role names, separated by ',' or ';'"})
def host(c, names):
    """Select hosts (or roles) for the tasks after it.

        deploytools host:web-0 deploy:airship
    """
    session.of(c).select(names)


@task(help={"service": "service name from services.yaml",
            "ref": "branch, tag or commit to deploy (default: the service's branch)",
            "force": "deploy a release an earlier gate rejected; move production non-fast-forward; "
                     "run an Alembic migration that drops what the old code reads"})
def deploy(c, service, ref=None, force=False):
    """Deploy a new release, wave by wave with health checks.

        deploytools deploy:airship,ref=master
    """
    operations.deploy(session.of(c), service, ref, force=force)


@task(help={"service": "service name", "hard": "full restart instead of a graceful reload"})
def restart(c, service, hard=False):
    """Gracefully reload the live release (hard=true: restart).

        deploytools restart:airship
    """
    operations.restart(session.of(c), service, hard=hard)


@task(help={"service": "service name", "to": "release name, tag or commit to go back to",
            "migrate": "also reverse migrations the target release does not have"})
def rollback(c, service, to=None, migrate=False):
    """Go back to the previous release on every host.

        deploytools rollback:airship[,to=TAG]
    """
    operations.rollback(session.of(c), service, to, migrate=migrate)


@task(help={"service": "service name"})
def status(c, service):
    """Show each host's release, commit, process state and health.

        deploytools status:airship
    """
    operations.status(session.of(c), service)


@task(help={"service": "service name"})
def setup(c, service):
    """Provision a service's directories and supervisord on its hosts.

        deploytools setup:airship
    """
    operations.setup(session.of(c), service)


@task(help={"service": "service name", "limit": "how many deploys to show"})
def history(c, service, limit=20):
    """List recent deploys and rollbacks of a service.

        deploytools history:airship
    """
    operations.history(session.of(c), service, int(limit))


@task(help={"service": "service name",
            "force": "break a lock whose heartbeat is fresh (its deploy may be running)"})
def unlock(c, service, force=False):
    """Break a deploy lock left by a dead deploy (a live one only with force=true).

        deploytools unlock:airship
    """
    operations.unlock(session.of(c), service, force=force)


@task(help={"service": "service name",
            "ref": "branch, tag or commit to deploy (default: the service's branch)",
            "force": "deploy a release an earlier gate rejected; move production non-fast-forward; "
                     "run an Alembic migration that drops what the old code reads"})
def smart_deploy(c, service, ref=None, force=False):
    """Deploy doing only what the change needs (venv, migrate, static).

        deploytools smart_deploy:airship
    """
    operations.deploy(session.of(c), service, ref, force=force, smart=True)


@task(help={"service": "service name", "ref": "what would be deployed (default: the branch)"})
def plan(c, service, ref=None):
    """Print what smart_deploy would do, wave by wave; change nothing.

        deploytools plan:airship
    """
    operations.plan(session.of(c), service, ref)


@task(help={"service": "service name",
            "to": "migrate back to the state recorded in this release's manifest"})
def migrate(c, service, to=None):
    """Apply the live release's database migrations, once.

        deploytools migrate:airship
    """
    operations.migrate(session.of(c), service, to)


@task(name="exec", help={
    "service": "service name",
    "command": "shell command, run in the live release (write a ',' in it as '\\,')",
    "once": "run it on the first selected host only"})
def exec_(c, service, command, once=False):
    """Run a command in the live release, with its environment and virtualenv.

        deploytools host:web-0 exec:flaskr,'flask --app flaskr init-db',once=true
    """
    operations.exec_command(session.of(c), service, command, once=once)


@task(help={"service": "service name"})
def media(c, service):
    """Collect static files into the live release; link its shared paths (media/).

        deploytools media:airship
    """
    operations.media(session.of(c), service)


@task(help={"service": "service name", "lines": "print the last N lines of each log and exit",
            "follow": "keep following (default unless --lines is given)"})
def monitor(c, service, lines=None, follow=None):
    """Follow the logs and status of every host at once.

        deploytools monitor:airship
    """
    monitor_mod.monitor(session.of(c), service, lines=lines, follow=follow)
