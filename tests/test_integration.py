"""INSTALLED_APPS integration, in a real project with a SQLite file (tests/shop)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from django.core.signals import request_started
from django.utils.functional import LazyObject, empty

from structured_signals import _integration

TESTS_DIR = Path(__file__).parent


def scenario(
    tmp_path: Path,
    name: str,
    structured_signals: object = None,
    asgi: str = "structured",
    module: str = "shop.scenarios",
    arguments: tuple[str, ...] = (),
    **environ: str,
) -> dict[str, Any]:
    """Run `python -m MODULE NAME ARGUMENTS...` in a fresh process; its JSON outcome."""
    env = {
        **environ,
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "shop.settings",
        "PYTHONPATH": str(TESTS_DIR),
        "SHOP_DB": str(tmp_path / "shop.sqlite3"),
        "SHOP_ASGI": asgi,
        "SHOP_STRUCTURED_SIGNALS": json.dumps(
            {} if structured_signals is None else structured_signals
        ),
    }
    done = subprocess.run(
        [sys.executable, "-m", module, name, *arguments],
        cwd=TESTS_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    outcome: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    return outcome


def test_asave_fires_post_save_whose_async_receivers_write_reaches_the_caller(
    tmp_path: Path,
) -> None:
    assert scenario(tmp_path, "asave") == {"last_saved": "espresso", "rows": 1}


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_sync_view_under_uvicorn_saving_a_model_with_an_async_receiver_using_the_orm_answers(
    tmp_path: Path, loop: str
) -> None:
    outcome = scenario(tmp_path, "sync_view_save", arguments=(loop,))
    assert outcome == {"status": 200, "orders_counted_by_the_receiver": 1}


def test_the_app_upgrades_djangos_builtin_signals_in_place(tmp_path: Path) -> None:
    outcome = scenario(tmp_path, "signals")
    assert all(outcome["structured"].values()), outcome["structured"]
    assert outcome["post_save_is_model_signal"] is True
    assert outcome["post_save_context"] == "shared"


def test_signals_of_the_project_and_signals_created_later_stay_djangos(tmp_path: Path) -> None:
    outcome = scenario(tmp_path, "signals")
    assert outcome["project_signal_structured"] is False
    assert outcome["later_signal_structured"] is False


def test_upgrade_all_upgrades_every_signal_that_exists_when_the_app_is_ready(
    tmp_path: Path,
) -> None:
    outcome = scenario(tmp_path, "signals", {"upgrade_all": True})
    assert outcome["project_signal_structured"] is True
    assert outcome["later_signal_structured"] is False


def test_settings_set_the_options_of_the_upgraded_signals(tmp_path: Path) -> None:
    outcome = scenario(tmp_path, "signals", {"context": "isolated", "timeout": 2.5})
    assert outcome["post_save_context"] == "isolated"
    assert outcome["post_save_timeout"] == 2.5


def test_check_is_silent_for_valid_settings_and_the_structured_handler(tmp_path: Path) -> None:
    outcome = scenario(tmp_path, "check", {"context": "isolated", "on_conflict": "last"})
    assert outcome["failed"] is False
    assert "structured_signals" not in outcome["output"]


@pytest.mark.parametrize(
    ("setting", "check_id", "hint"),
    [
        (["context"], "structured_signals.E001", "must be a dict"),
        ({"contxt": "isolated"}, "structured_signals.E002", "Use only 'context'"),
        ({"context": "private"}, "structured_signals.E003", '"shared" (the default)'),
        ({"on_conflict": "newest"}, "structured_signals.E004", '"raise" (the default)'),
        ({"timeout": -1}, "structured_signals.E005", "None (the default)"),
        ({"upgrade_all": "yes"}, "structured_signals.E006", "True upgrades every Signal"),
    ],
)
def test_check_reports_invalid_settings_with_an_id_and_a_hint_instead_of_crashing(
    tmp_path: Path, setting: object, check_id: str, hint: str
) -> None:
    outcome = scenario(tmp_path, "check", setting)
    assert outcome["failed"] is True
    assert check_id in outcome["output"]
    assert hint in outcome["output"]


def test_check_warns_when_the_project_serves_asgi_with_djangos_stock_handler(
    tmp_path: Path,
) -> None:
    outcome = scenario(tmp_path, "check", asgi="stock")
    assert outcome["failed"] is False
    assert "structured_signals.W001" in outcome["output"]
    assert "(ASGIHandler)" in outcome["output"]
    assert "instead of ASGIHandler()" in outcome["output"]


def test_check_is_silent_when_djangos_own_entry_point_builds_the_handler(
    tmp_path: Path,
) -> None:
    outcome = scenario(tmp_path, "check", asgi="django")
    assert outcome["failed"] is False
    assert "structured_signals" not in outcome["output"]


def test_check_looks_through_a_channels_router_and_middleware_to_the_stock_handler(
    tmp_path: Path,
) -> None:
    outcome = scenario(tmp_path, "check", asgi="router")
    assert outcome["failed"] is False
    assert "structured_signals.W001" in outcome["output"]
    assert "(ProtocolTypeRouter -> AuthMiddleware -> ASGIHandler)" in outcome["output"]


def test_check_reports_that_it_could_not_look_when_the_asgi_module_raises_instead_of_crashing(
    tmp_path: Path,
) -> None:
    outcome = scenario(tmp_path, "check", asgi="raises")
    assert outcome["failed"] is False
    assert "structured_signals.W002" in outcome["output"]
    assert "RuntimeError: SHOP_SECRET is not set" in outcome["output"]
    assert "structured_signals.W001" not in outcome["output"]


@pytest.mark.parametrize("path", ["shop.nowhere.application", "shop.models.application"])
def test_check_is_silent_when_the_asgi_application_does_not_exist(
    tmp_path: Path, path: str
) -> None:
    outcome = scenario(tmp_path, "check", SHOP_ASGI_APPLICATION=path)
    assert outcome["failed"] is False
    assert "structured_signals" not in outcome["output"]


@pytest.mark.parametrize("asgi", ["django", "structured"])
def test_an_apm_wrapping_djangos_entry_point_wraps_the_structured_handler(
    tmp_path: Path, asgi: str
) -> None:
    # ddtrace's patch(django=True) wraps django.core.asgi.get_asgi_application
    # before Django is set up; asgi.py calls either entry point.
    outcome = scenario(tmp_path, "", asgi=asgi, module="shop.apm")
    assert outcome["route"] == ["TraceMiddleware", "StructuredASGIHandler"]
    assert outcome["traced"] == ["/"]
    assert outcome["status"] == 404


class Exploding(LazyObject):  # type: ignore[type-arg]
    """A lazy object whose setup fails, as GeoDjango's GEOS library without GEOS."""

    def _setup(self) -> None:
        raise ImportError("Could not find the GEOS library")


@pytest.fixture
def lazy_in_a_django_module(monkeypatch: pytest.MonkeyPatch) -> Exploding:
    lazy = Exploding()
    module = ModuleType("django._structured_signals_lazy")
    module.lazy = lazy  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, module.__name__, module)
    return lazy


def test_finding_djangos_signals_evaluates_no_lazy_object(
    lazy_in_a_django_module: Exploding,
) -> None:
    found = _integration._django_signals()
    assert request_started in found
    assert lazy_in_a_django_module._wrapped is empty


def test_finding_every_signal_for_upgrade_all_evaluates_no_lazy_object(
    lazy_in_a_django_module: Exploding,
) -> None:
    found = _integration._all_signals()
    assert request_started in found
    assert lazy_in_a_django_module._wrapped is empty


def test_startup_leaves_djangos_default_storage_unbuilt(tmp_path: Path) -> None:
    # Django builds it on first use; model fields import it before apps are ready.
    assert scenario(tmp_path, "storage") == {"default_storage_built": False}


class Middleware:
    """ASGI middleware as Sentry's and OpenTelemetry's keep what they wrap."""

    def __init__(self, app: object) -> None:
        self.app = app


def test_w001_follows_middleware_to_a_lazy_application_without_evaluating_it() -> None:
    lazy = Exploding()
    route = _integration._http_route(Middleware(Middleware(lazy)))
    assert [type(app) for app in route] == [Middleware, Middleware, Exploding]
    assert route[-1] is lazy
    assert lazy._wrapped is empty
