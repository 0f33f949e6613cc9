"""demo_project's views, an HTML page for the toolbar, a failing view, the telemetry."""

from __future__ import annotations

from typing import TYPE_CHECKING

from demo_project.urls import urlpatterns as demo_urlpatterns
from django.conf import settings
from django.http import HttpResponse, JsonResponse
from django.urls import include, path

from eco_project import telemetry

if TYPE_CHECKING:
    from django.http import HttpRequest
    from django.urls import URLPattern, URLResolver


def show_toolbar(request: HttpRequest) -> bool:
    return True


async def page(request: HttpRequest) -> HttpResponse:
    """An HTML page: the toolbar inserts itself before </body>."""
    return HttpResponse("<html><body><p>page</p></body></html>")


async def boom(request: HttpRequest) -> HttpResponse:
    raise ZeroDivisionError("boom")


async def recorded(request: HttpRequest) -> JsonResponse:
    """What the APM recorded so far: its spans or events, as JSON."""
    return JsonResponse({"recorded": telemetry.recorded()})


urlpatterns: list[URLPattern | URLResolver] = [
    *demo_urlpatterns,
    path("page/", page),
    path("boom/", boom),
    path("telemetry/", recorded),
]
if settings.TOOLBAR:
    urlpatterns.append(path("__debug__/", include("debug_toolbar.urls")))
