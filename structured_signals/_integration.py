"""Django integration: what "structured_signals" in INSTALLED_APPS does.

When the app is ready it upgrades Django's built-in signal objects in place
(and, with STRUCTURED_SIGNALS["upgrade_all"], every Signal that exists by
then); the settings give the options of those signals and of the ASGI
handler; system checks report bad settings and a project still served by
Django's stock ASGI handler.
"""

from __future__ import annotations

import gc
import sys
from typing import Any

from django.conf import settings
from django.core import checks
from django.dispatch import Signal
from django.utils.module_loading import import_string

from structured_signals._signal import _check_options, upgrade

__all__ = ("check_asgi_handler", "check_settings", "options", "upgrade_signals")

SETTING = "STRUCTURED_SIGNALS"
_DEFAULTS: dict[str, Any] = {"context": "shared", "on_conflict": "raise", "timeout": None}
_KEYS = (*_DEFAULTS, "upgrade_all")
# Imported here so that their signals exist when the app is ready.
_BUILTIN_SIGNAL_MODULES = (
    "django.core.signals",
    "django.db.models.signals",
    "django.db.backends.signals",
)


def options() -> dict[str, Any]:
    """The valid options of STRUCTURED_SIGNALS; an invalid one stays at its default.

    Invalid values are reported by `check_settings`, never raised at import.
    """
    configured = getattr(settings, SETTING, {})
    if not isinstance(configured, dict):
        return dict(_DEFAULTS)
    return {
        key: configured[key]
        if key in configured and not _option_error(key, configured)
        else default
        for key, default in _DEFAULTS.items()
    }


def upgrade_signals() -> None:
    """Upgrade Django's built-in signals, or every existing Signal if asked to."""
    for module in _BUILTIN_SIGNAL_MODULES:
        __import__(module)
    chosen = options()
    signals = _all_signals() if _upgrade_all() else _django_signals()
    for signal in signals:
        upgrade(signal, **chosen)


def _upgrade_all() -> bool:
    configured = getattr(settings, SETTING, {})
    return isinstance(configured, dict) and configured.get("upgrade_all") is True


def _django_signals() -> list[Signal]:
    """The Signal objects defined by Django's own modules, loaded by now."""
    found: dict[int, Signal] = {}
    for name, module in list(sys.modules.items()):
        if name == "django" or name.startswith("django."):
            for value in list(vars(module).values()):
                if isinstance(value, Signal):
                    found[id(value)] = value
    return list(found.values())


def _all_signals() -> list[Signal]:
    return [obj for obj in gc.get_objects() if isinstance(obj, Signal)]


def _option_error(key: str, configured: dict[str, Any]) -> str | None:
    if key not in configured:
        return None
    try:
        _check_options(**{**_DEFAULTS, key: configured[key]})
    except ValueError as error:
        return str(error)
    return None


_OPTION_IDS = {"context": "E003", "on_conflict": "E004", "timeout": "E005"}
_HINTS = {
    "context": '"shared" (the default) or "isolated".',
    "on_conflict": '"raise" (the default), "first", "last", or a callable taking a Conflict.',
    "timeout": "None (the default) or a number of seconds above 0.",
}


def check_settings(**kwargs: Any) -> list[checks.CheckMessage]:
    """STRUCTURED_SIGNALS is a dict of known keys with valid values."""
    configured = getattr(settings, SETTING, {})
    if not isinstance(configured, dict):
        return [
            checks.Error(
                f"{SETTING} must be a dict, not {type(configured).__name__}.",
                hint=f'For example {SETTING} = {{"context": "isolated"}}.',
                id="structured_signals.E001",
            )
        ]
    messages: list[checks.CheckMessage] = [
        checks.Error(
            f"{SETTING} has an unknown key {key!r}.",
            hint=f"Use only {', '.join(map(repr, _KEYS))}.",
            id="structured_signals.E002",
        )
        for key in configured
        if key not in _KEYS
    ]
    for key, check_id in _OPTION_IDS.items():
        error = _option_error(key, configured)
        if error is not None:
            messages.append(
                checks.Error(
                    f"{SETTING}[{key!r}] is invalid: {error}",
                    hint=f"Set it to {_HINTS[key]}",
                    id=f"structured_signals.{check_id}",
                )
            )
    if "upgrade_all" in configured and not isinstance(configured["upgrade_all"], bool):
        messages.append(
            checks.Error(
                f"{SETTING}['upgrade_all'] must be True or False.",
                hint="True upgrades every Signal that exists when the app is ready.",
                id="structured_signals.E006",
            )
        )
    return messages


def check_asgi_handler(**kwargs: Any) -> list[checks.CheckMessage]:
    """The project's ASGI application is not Django's stock handler."""
    from django.core.handlers.asgi import ASGIHandler

    from structured_signals.asgi import StructuredASGIHandler

    path = _asgi_application_path()
    application = _import_or_none(path) if path else None
    if not isinstance(application, ASGIHandler) or isinstance(application, StructuredASGIHandler):
        return []
    module = path.rsplit(".", 1)[0] if path else ""
    return [
        checks.Warning(
            f"{path} is Django's own ASGIHandler: with structured_signals installed, its "
            "request_started receivers' writes still never reach the view, and the view's "
            "never reach request_finished, on Django 6.0 and earlier.",
            hint=f"In {module}, import get_asgi_application from structured_signals.asgi "
            "instead of django.core.asgi.",
            id="structured_signals.W001",
        )
    ]


def _asgi_application_path() -> str | None:
    """ASGI_APPLICATION if set (as Channels and Daphne name it), else startproject's asgi.py."""
    path = getattr(settings, "ASGI_APPLICATION", None)
    if path:
        return str(path)
    settings_module = settings.SETTINGS_MODULE
    if not settings_module or "." not in settings_module:
        return None
    return f"{settings_module.rsplit('.', 1)[0]}.asgi.application"


def _import_or_none(path: str) -> object:
    try:
        return import_string(path)
    except ImportError:
        return None
