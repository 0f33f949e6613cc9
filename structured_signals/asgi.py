"""The ASGI entry point.

With "structured_signals" in INSTALLED_APPS, Django's own
`django.core.asgi.get_asgi_application()` hands out a StructuredASGIHandler:
`asgi.py` needs no change. Without the app, or to say it in `asgi.py`:

from structured_signals.asgi import get_asgi_application

application = get_asgi_application()
"""

from __future__ import annotations

import contextvars
from typing import cast

import django
from django.core import asgi as django_asgi

from structured_signals._handler import StructuredASGIHandler

__all__ = ("StructuredASGIHandler", "get_asgi_application")

# True while get_asgi_application() is inside Django's entry point: if that
# entry point is, or leads back to, this function, it builds the handler itself.
_delegating: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "structured_signals_delegating", default=False
)


def get_asgi_application() -> StructuredASGIHandler:
    """Set Django up and return a StructuredASGIHandler, through Django's own entry point.

    Django's `get_asgi_application` is looked up and called now, so that what
    an APM wrapped around it (ddtrace's `patch(django=True)` wraps it in its
    ASGI TraceMiddleware) wraps the structured handler too; it then returns
    that wrapper around the StructuredASGIHandler, as Django's does.
    """
    _use_structured_handler()
    if _delegating.get():
        django.setup(set_prefix=False)
        return StructuredASGIHandler()
    token = _delegating.set(True)
    try:
        # An APM's wrapper is not a StructuredASGIHandler, but holds one.
        return cast("StructuredASGIHandler", django_asgi.get_asgi_application())
    finally:
        _delegating.reset(token)


def _use_structured_handler() -> None:
    """Make Django's `get_asgi_application()` hand out a StructuredASGIHandler.

    It builds the handler class named `ASGIHandler` in `django.core.asgi`,
    looked up when it is called, and that name alone is replaced: the class
    itself, `django.core.handlers.asgi.ASGIHandler`, stays Django's, and
    `ASGIHandler()` is Django's stock handler. The app calls this when it is
    ready, inside `get_asgi_application()` itself, so even that first call,
    already under way (and under an APM's wrapper), builds ours.
    """
    django_asgi.ASGIHandler = StructuredASGIHandler  # type: ignore[attr-defined]
