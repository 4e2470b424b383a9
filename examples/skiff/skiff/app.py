"""skiff: a tiny Flask service. Run `gunicorn skiff.app:app` from the repo root."""
import logging
import os
import socket
import sys
from pathlib import Path

from flask import Flask, jsonify

from .version import VERSION

# The release directory (parent of this package), with symlinks resolved.
ROOT = Path(__file__).resolve().parent.parent

logging.basicConfig(stream=sys.stderr, level=logging.INFO,
                    format="%(asctime)s %(levelname)s %(name)s: %(message)s")
log = logging.getLogger("skiff")

app = Flask(__name__)


def revision():
    """The commit this release was built from: the deploy tool writes it to REVISION."""
    try:
        return (ROOT / "REVISION").read_text().strip() or "unknown"
    except OSError:
        return "unknown"


@app.get("/healthz")
def healthz():
    return "ok", 200, {"Content-Type": "text/plain"}


@app.get("/")
def index():
    return jsonify(
        service="skiff",
        version=VERSION,
        revision=revision(),
        hostname=socket.gethostname(),
        pid=os.getpid(),
    )


@app.get("/version")
def version():
    return revision(), 200, {"Content-Type": "text/plain"}
