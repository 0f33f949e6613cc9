"""The Django app: add "structured_signals" to INSTALLED_APPS."""

from __future__ import annotations

from django.apps import AppConfig
from django.core import checks


class StructuredSignalsConfig(AppConfig):
    name = "structured_signals"
    verbose_name = "Structured signals"

    def ready(self) -> None:
        from structured_signals import _integration, asgi

        _integration.upgrade_signals()
        asgi._use_structured_handler()
        checks.register(_integration.check_settings)
        checks.register(_integration.check_asgi_handler)
