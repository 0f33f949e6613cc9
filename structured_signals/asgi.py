"""The ASGI entry point: use it in your project's asgi.py instead of Django's.

from structured_signals.asgi import get_asgi_application

application = get_asgi_application()
"""

from __future__ import annotations

import django

from structured_signals._handler import StructuredASGIHandler

__all__ = ("StructuredASGIHandler", "get_asgi_application")


def get_asgi_application() -> StructuredASGIHandler:
    """Set Django up and return a StructuredASGIHandler, like Django's own."""
    django.setup(set_prefix=False)
    return StructuredASGIHandler()
