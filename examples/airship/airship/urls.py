from django.conf import settings
from django.urls import path, re_path
from django.views.static import serve

from . import views

urlpatterns = [
    path("", views.index),
    path("healthz", views.healthz),
    path("version", views.version),
    path("flights", views.flights),
    # Serve collected static files ourselves: works with DEBUG off, no extra deps.
    re_path(r"^static/(?P<path>.*)$", serve, {"document_root": settings.STATIC_ROOT}),
]
