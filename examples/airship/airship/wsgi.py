"""WSGI entry point: `gunicorn airship.wsgi` from the release directory."""
import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "airship.settings")
application = get_wsgi_application()

# Load the URLconf (and so every view) now: a release that cannot import fails
# at boot and under `gunicorn --check-config`, not on its first request.
import airship.urls  # noqa: E402,F401
