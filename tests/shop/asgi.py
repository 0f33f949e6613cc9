"""The project's asgi.py, as SHOP_ASGI picks it.

"structured": structured_signals.asgi's entry point; "django": Django's, which
the installed app makes structured; "stock": Django's ASGIHandler() itself;
"router": the stock handler behind a Channels-style router and middleware;
"raises": an asgi.py that fails outside production (a missing variable).
"""

from __future__ import annotations

import os
from typing import Any

import django

choice = os.environ.get("SHOP_ASGI", "structured")


class ProtocolTypeRouter:
    """Channels' ProtocolTypeRouter, as far as it matters here: the mapping it keeps."""

    def __init__(self, application_mapping: dict[str, Any]) -> None:
        self.application_mapping = application_mapping


class AuthMiddleware:
    """Channels' BaseMiddleware keeps the application it wraps in `inner`."""

    def __init__(self, inner: object) -> None:
        self.inner = inner


application: object
if choice == "structured":
    from structured_signals.asgi import get_asgi_application

    application = get_asgi_application()
elif choice == "django":
    from django.core.asgi import get_asgi_application as django_get_asgi_application

    application = django_get_asgi_application()
elif choice in ("stock", "router"):
    from django.core.handlers.asgi import ASGIHandler

    django.setup(set_prefix=False)
    stock = ASGIHandler()
    application = (
        stock
        if choice == "stock"
        else ProtocolTypeRouter({"http": AuthMiddleware(stock), "websocket": object()})
    )
else:
    raise RuntimeError("SHOP_SECRET is not set")
