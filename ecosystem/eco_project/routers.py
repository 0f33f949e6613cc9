"""ASGI applications as Channels projects write them, for structured_signals.W001."""

from __future__ import annotations

from channels.routing import ProtocolTypeRouter
from channels.security.websocket import OriginValidator
from channels.sessions import CookieMiddleware
from django.core.asgi import get_asgi_application
from django.core.handlers.asgi import ASGIHandler

# Django's stock handler, built directly, behind Channels' middleware.
stock = ProtocolTypeRouter({"http": OriginValidator(CookieMiddleware(ASGIHandler()), ["*"])})
# Django's entry point: the installed app makes it hand out the structured handler.
structured = ProtocolTypeRouter({"http": OriginValidator(get_asgi_application(), ["*"])})
