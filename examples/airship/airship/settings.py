"""airship settings. Everything host-specific comes from the environment.

  SECRET_KEY           signing key (an insecure default is used if unset)
  DATABASE_URL         postgres://user:pass@host:port/name; if unset, SQLite at
  AIRSHIP_SQLITE_PATH  or <release>/../../shared/airship.sqlite3
  STATIC_ROOT          where collectstatic writes; default <release>/staticfiles
"""
import os
from pathlib import Path
from urllib.parse import unquote, urlsplit

# The release directory (the one holding manage.py), with symlinks resolved.
BASE_DIR = Path(__file__).resolve().parent.parent

SECRET_KEY = os.environ.get("SECRET_KEY", "insecure-airship-sample-key")
DEBUG = False
ALLOWED_HOSTS = ["*"]

INSTALLED_APPS = ["django.contrib.staticfiles", "flights"]
MIDDLEWARE = []
ROOT_URLCONF = "airship.urls"
WSGI_APPLICATION = "airship.wsgi.application"
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"


def postgres_from_url(url):
    parts = urlsplit(url)
    if parts.scheme not in ("postgres", "postgresql"):
        raise ValueError(f"DATABASE_URL must be postgres://..., not {parts.scheme}://")
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": unquote(parts.path.lstrip("/")),
        "USER": unquote(parts.username or ""),
        "PASSWORD": unquote(parts.password or ""),
        "HOST": parts.hostname or "",
        "PORT": str(parts.port or ""),
    }


if os.environ.get("DATABASE_URL"):
    DATABASES = {"default": postgres_from_url(os.environ["DATABASE_URL"])}
else:
    # The deploy tool keeps shared/ next to releases/: <app>/releases/<id>/ -> <app>/shared/
    sqlite_path = os.environ.get("AIRSHIP_SQLITE_PATH") or BASE_DIR.parent.parent / "shared" / "airship.sqlite3"
    DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": Path(sqlite_path)}}

STATIC_URL = "/static/"
STATIC_ROOT = Path(os.environ.get("STATIC_ROOT") or BASE_DIR / "staticfiles")

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "plain"}},  # stderr
    "root": {"handlers": ["stderr"], "level": "INFO"},
}
