"""dory: a plain WSGI service. Run `gunicorn dory.wsgi` from the repo root."""
import json
import logging
import os
import socket
import sys
from pathlib import Path

from .version import VERSION

# The release directory (parent of this package), with symlinks resolved.
ROOT = Path(__file__).resolve().parent.parent

logging.basicConfig(stream=sys.stderr, level=logging.INFO,
                    format="%(asctime)s %(levelname)s %(name)s: %(message)s")
log = logging.getLogger("dory")


def revision():
    """The commit this release was built from: the deploy tool writes it to REVISION."""
    try:
        return (ROOT / "REVISION").read_text().strip() or "unknown"
    except OSError:
        return "unknown"


def index():
    body = {
        "service": "dory",
        "version": VERSION,
        "revision": revision(),
        "hostname": socket.gethostname(),
        "pid": os.getpid(),
    }
    return "200 OK", "application/json", json.dumps(body)


def application(environ, start_response):
    path = environ.get("PATH_INFO") or "/"
    if path == "/healthz":
        status, ctype, body = "200 OK", "text/plain", "ok"
    elif path == "/":
        status, ctype, body = index()
    elif path == "/version":
        status, ctype, body = "200 OK", "text/plain", revision()
    else:
        status, ctype, body = "404 Not Found", "text/plain", "not found"
    data = body.encode()
    start_response(status, [("Content-Type", ctype), ("Content-Length", str(len(data)))])
    return [data]
