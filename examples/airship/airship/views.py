import logging
import os
import socket

from django.conf import settings
from django.http import HttpResponse, JsonResponse

from flights.models import Flight

from .version import VERSION

log = logging.getLogger(__name__)


def revision():
    """The commit this release was built from: the deploy tool writes it to REVISION."""
    try:
        return (settings.BASE_DIR / "REVISION").read_text().strip() or "unknown"
    except OSError:
        return "unknown"


def healthz(request):
    return HttpResponse("ok", content_type="text/plain")  # no database access


def index(request):
    return JsonResponse({
        "service": "airship",
        "version": VERSION,
        "revision": revision(),
        "hostname": socket.gethostname(),
        "pid": os.getpid(),
    })


def version(request):
    return HttpResponse(revision(), content_type="text/plain")


def flights(request):
    return JsonResponse({"count": Flight.objects.count()})
