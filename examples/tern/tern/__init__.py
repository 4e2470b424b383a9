"""tern: a Flask app factory on PostgreSQL, its schema migrated by Alembic.

Run it as `gunicorn 'tern:create_app()'` with DATABASE_URL set; `alembic upgrade head`
(alembic.ini, migrations/) creates and changes the schema.
"""
import os
import socket

import sqlalchemy as sa
from flask import Flask, jsonify

from .version import VERSION

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def database_url() -> str:
    """DATABASE_URL, postgres:// spelled the way SQLAlchemy wants it (psycopg 3)."""
    url = os.environ["DATABASE_URL"]
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


def revision():
    try:
        with open(os.path.join(ROOT, "REVISION")) as f:
            return f.read().strip() or "unknown"
    except OSError:
        return "unknown"


def create_app():
    app = Flask(__name__)
    engine = sa.create_engine(database_url(), pool_pre_ping=True)

    @app.get("/healthz")
    def healthz():
        return "ok", 200, {"Content-Type": "text/plain"}

    @app.get("/")
    def index():
        return jsonify(service="tern", version=VERSION, revision=revision(),
                       hostname=socket.gethostname(), pid=os.getpid())

    @app.get("/posts")
    def posts():
        with engine.connect() as db:
            rows = db.execute(sa.text("SELECT id, title FROM post ORDER BY id")).all()
        return jsonify(posts=[{"id": r.id, "title": r.title} for r in rows])

    return app
