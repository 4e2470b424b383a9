"""deploytools tasks. Each parses its arguments and calls one library function.

    fab host:web-0 deploy:airship restart:airship     (classic syntax)
    fab -H web-0 deploy airship restart airship        (modern syntax)
"""
from invoke import task

from deploytools import operations
from deploytools.session import current


@task(help={"names": "host names or role names, separated by ',' or ';'"})
def host(c, names):
    """Select hosts (or roles) for the tasks after it: fab host:web-0 deploy:airship"""
    current().select(names)


@task(help={"service": "service name from services.yaml",
            "ref": "branch, tag or commit to deploy (default: the service's branch)",
            "force": "deploy a release an earlier gate rejected; move production non-fast-forward"})
def deploy(c, service, ref=None, force=False):
    """Deploy a new release, wave by wave with health checks: fab deploy:airship,ref=master"""
    operations.deploy(current(), service, ref, force=force)


@task(help={"service": "service name", "hard": "full restart instead of a graceful reload"})
def restart(c, service, hard=False):
    """Gracefully reload the live release (hard=true: restart): fab restart:airship"""
    operations.restart(current(), service, hard=hard)


@task(help={"service": "service name", "to": "release name, tag or commit to go back to",
            "migrate": "also reverse migrations the target release does not have"})
def rollback(c, service, to=None, migrate=False):
    """Go back to the previous release on every host: fab rollback:airship[,to=TAG]"""
    operations.rollback(current(), service, to, migrate=migrate)


@task(help={"service": "service name"})
def status(c, service):
    """Show each host's release, commit, process state and health: fab status:airship"""
    operations.status(current(), service)


@task(help={"service": "service name"})
def setup(c, service):
    """Provision a service's directories and supervisord on its hosts: fab setup:airship"""
    operations.setup(current(), service)


@task(help={"service": "service name", "limit": "how many deploys to show"})
def history(c, service, limit=20):
    """List recent deploys and rollbacks of a service: fab history:airship"""
    operations.history(current(), service, int(limit))


@task(help={"service": "service name"})
def unlock(c, service):
    """Break a deploy lock left by a dead deploy: fab unlock:airship"""
    operations.unlock(current(), service)


@task(help={"service": "service name",
            "ref": "branch, tag or commit to deploy (default: the service's branch)",
            "force": "deploy a release an earlier gate rejected; move production non-fast-forward"})
def smart_deploy(c, service, ref=None, force=False):
    """Deploy doing only what the change needs (venv, migrate, static): fab smart_deploy:airship"""
    operations.deploy(current(), service, ref, force=force, smart=True)


@task(help={"service": "service name", "ref": "what would be deployed (default: the branch)"})
def plan(c, service, ref=None):
    """Print what smart_deploy would do, wave by wave; change nothing: fab plan:airship"""
    operations.plan(current(), service, ref)


@task(help={"service": "service name",
            "to": "migrate back to the state recorded in this release's manifest"})
def migrate(c, service, to=None):
    """Apply the live release's database migrations, once: fab migrate:airship"""
    operations.migrate(current(), service, to)


@task(help={"service": "service name"})
def media(c, service):
    """Collect static files into the live release and make sure shared/media exists: fab media:airship"""
    operations.media(current(), service)


@task(help={"service": "service name", "lines": "print the last N lines of each log and exit",
            "follow": "keep following (default unless --lines is given)"})
def monitor(c, service, lines=None, follow=None):
    """Follow the logs and status of every host at once: fab monitor:airship"""
    from deploytools import monitor as monitor_mod
    monitor_mod.monitor(current(), service, lines=int(lines) if lines else None, follow=follow)
