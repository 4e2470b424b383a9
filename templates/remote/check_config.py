"""`gunicorn --check-config ARGS...` (the release's app imported with its config), run
by gunicorn's own entry point, then os._exit with its status: the check is over, and
Python's teardown of the app and gunicorn (20 to 30 ms of the host's CPU on every
staging) checks nothing. Nor does a thread the app started at import hold it up.

    python -c PROGRAM --check-config -c CONF --chdir RELEASE APP
"""
import os
import sys

from gunicorn.app.wsgiapp import run

sys.argv[0] = "gunicorn"
try:
    run()
    status = 0
except SystemExit as e:
    status = e.code
if status is not None and not isinstance(status, int):
    print(status, file=sys.stderr)
    status = 1
sys.stdout.flush()
sys.stderr.flush()
os._exit(status or 0)
