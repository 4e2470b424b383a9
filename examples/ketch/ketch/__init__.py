"""ketch: a Flask app factory. Run it as Flask's docs say: `gunicorn 'ketch:create_app()'`.

`flask --app ketch init-db` creates its SQLite database (KETCH_DATABASE, else
ketch.sqlite in Flask's instance folder), once per server; /posts needs it.
"""
import os
import socket
import sqlite3
import sys
from pathlib import Path

import click
from flask import Flask, jsonify

from .version import VERSION

# The release directory (parent of this package), with symlinks resolved.
ROOT = Path(__file__).resolve().parent.parent


def revision():
    """The commit this release was built from: the deploy tool writes it to REVISION."""
    try:
        return (ROOT / "REVISION").read_text().strip() or "unknown"
    except OSError:
        return "unknown"


def create_app(test_config=None):
    app = Flask(__name__)
    app.config.from_mapping(DATABASE=os.environ.get("KETCH_DATABASE")
                            or os.path.join(app.instance_path, "ketch.sqlite"))
    if test_config:
        app.config.update(test_config)

    def connect(mode):
        return sqlite3.connect(f"file:{app.config['DATABASE']}?mode={mode}", uri=True)

    @app.get("/healthz")
    def healthz():
        return "ok", 200, {"Content-Type": "text/plain"}

    @app.get("/hello")
    def hello():
        return "Hello, World!", 200, {"Content-Type": "text/plain"}

    @app.get("/")
    def index():
        return jsonify(
            service="ketch",
            version=VERSION,
            revision=revision(),
            hostname=socket.gethostname(),
            pid=os.getpid(),
            code=__file__,  # where the running code was imported from
        )

    @app.get("/version")
    def version():
        return revision(), 200, {"Content-Type": "text/plain"}

    @app.get("/posts")
    def posts():
        try:
            with connect("ro") as db:
                count = db.execute("SELECT count(*) FROM post").fetchone()[0]
        except sqlite3.Error as e:
            return f"database not initialised: {e}\n", 500, {"Content-Type": "text/plain"}
        return jsonify(posts=count)

    @app.cli.command("init-db")
    def init_db():
        """Create the database (again: its tables are dropped first)."""
        os.makedirs(os.path.dirname(app.config["DATABASE"]) or ".", exist_ok=True)
        with connect("rwc") as db:
            db.executescript("DROP TABLE IF EXISTS post;"
                             "CREATE TABLE post (id INTEGER PRIMARY KEY, title TEXT NOT NULL);")
        click.echo(f"Initialized the database. (python {sys.version.split()[0]})")

    return app
