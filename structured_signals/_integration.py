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
from types import ModuleType
from typing import TYPE_CHECKING, Any, TypeVar

from django.conf import settings
from django.core import checks
from django.dispatch import Signal
from django.utils.module_loading import import_string

from structured_signals._signal import _check_options, upgrade

if TYPE_CHECKING:
    from typing import TypeGuard

T = TypeVar("T")

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
        if (name == "django" or name.startswith("django.")) and _is(module, ModuleType):
            for value in list(vars(module).values()):
                if _is(value, Signal):
                    found[id(value)] = value
    return list(found.values())


def _all_signals() -> list[Signal]:
    return [obj for obj in gc.get_objects() if _is(obj, Signal)]


def _is(value: object, cls: type[T]) -> TypeGuard[T]:
    """isinstance() by the real type only, which evaluates no lazy object.

    isinstance() falls back to `value.__class__`, which a LazyObject answers
    by building its object: GeoDjango's GEOS library (an ImportError where it
    is not installed), `default_storage`, `staticfiles_storage`... The app
    must touch nothing it does not upgrade.
    """
    return issubclass(type(value), cls)


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
    """The project's ASGI application does not serve HTTP with Django's stock handler.

    A system check never raises: an application that fails to import is
    reported as W002, with the reason, and W001 stays unknown.
    """
    from django.core.handlers.asgi import ASGIHandler

    from structured_signals.asgi import StructuredASGIHandler

    path = _asgi_application_path()
    if path is None:
        return []
    try:
        application = import_string(path)
    except Exception as error:  # noqa: BLE001 -- a system check reports, never raises
        if _names_nothing(error, path):
            return []
        return [
            checks.Warning(
                f"structured_signals could not look at {path} for Django's stock ASGIHandler "
                f"(W001): importing it raised {type(error).__name__}: {error}",
                hint="Make it importable where `manage.py check` runs, or add "
                '"structured_signals.W002" to SILENCED_SYSTEM_CHECKS if it only imports '
                "in production.",
                id="structured_signals.W002",
            )
        ]
    route = _http_route(application)
    if not _is(route[-1], ASGIHandler) or _is(route[-1], StructuredASGIHandler):
        return []
    through = " -> ".join(type(app).__name__ for app in route)
    return [
        checks.Warning(
            f"{path} serves HTTP with Django's stock ASGIHandler ({through}): its "
            "request_started receivers' writes never reach the view, and the view's never "
            "reach request_finished, on Django 6.0 and earlier.",
            hint="Build it with get_asgi_application(), Django's (which hands out the "
            "structured handler once the app is installed) or structured_signals.asgi's, "
            "instead of ASGIHandler().",
            id="structured_signals.W001",
        )
    ]


# Where ASGI routers and middleware keep the application they pass HTTP to:
# Channels' ProtocolTypeRouter an "http" entry of `application_mapping`;
# Channels' middleware `inner`; OriginValidator and Django's static files
# handler `application`; Sentry's, OpenTelemetry's and ddtrace's middleware `app`.
_INNER_APPLICATION_ATTRIBUTES = ("app", "application", "inner")
_MAX_ROUTE = 32


def _http_route(application: object) -> list[object]:
    """The applications an HTTP request passes through, as far as attributes show.

    Only instance attributes are read (no property, no __getattr__, no lazy
    object evaluated) and nothing is called, so an application that picks
    its inner one at run time ends the route.
    """
    route = [application]
    while len(route) < _MAX_ROUTE:
        inner = _inner_http_application(route[-1])
        if inner is None or any(inner is app for app in route):
            break
        route.append(inner)
    return route


def _inner_http_application(application: object) -> object | None:
    try:
        attributes: object = object.__getattribute__(application, "__dict__")
    except AttributeError:
        return None
    if not _is(attributes, dict):
        return None
    mapping: object = attributes.get("application_mapping")
    if _is(mapping, dict):
        http: object = mapping.get("http")
        return http
    for name in _INNER_APPLICATION_ATTRIBUTES:
        if name in attributes:
            inner: object = attributes[name]
            return inner
    return None


def _asgi_application_path() -> str | None:
    """ASGI_APPLICATION if set (as Channels and Daphne name it), else startproject's asgi.py."""
    path = getattr(settings, "ASGI_APPLICATION", None)
    if path:
        return str(path)
    settings_module = settings.SETTINGS_MODULE
    if not settings_module or "." not in settings_module:
        return None
    return f"{settings_module.rsplit('.', 1)[0]}.asgi.application"


def _names_nothing(error: Exception, path: str) -> bool:
    """The import failed because `path` names no module or attribute (no asgi.py).

    An ImportError raised while the module itself runs (a dependency it
    imports is missing) is a failure to look, not an absence.
    """
    if not _is(error, ImportError):
        return False
    module = path.rsplit(".", 1)[0]
    if _is(error, ModuleNotFoundError):
        missing = error.name or ""
        return module == missing or module.startswith(missing + ".")
    # import_string's error for a module without that attribute, also raised
    # for an AttributeError while the module ran: then the module was not kept.
    return _is(error.__cause__, AttributeError) and module in sys.modules
