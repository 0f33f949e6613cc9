"""structured_signals.W001 looks through Channels' router and middleware."""

from __future__ import annotations

from typing import TYPE_CHECKING

from django.core import checks

from structured_signals._integration import check_asgi_handler

if TYPE_CHECKING:
    from pytest_django.fixtures import Settings


def test_w001_finds_the_stock_handler_behind_channels_router_and_middleware(
    settings: Settings,
) -> None:
    settings.ASGI_APPLICATION = "eco_project.routers.stock"
    (warning,) = check_asgi_handler()
    assert warning.id == "structured_signals.W001"
    assert "ProtocolTypeRouter -> OriginValidator -> CookieMiddleware -> ASGIHandler" in str(
        warning.msg
    )


def test_w001_is_silent_for_djangos_entry_point_behind_channels(
    settings: Settings,
) -> None:
    settings.ASGI_APPLICATION = "eco_project.routers.structured"
    assert check_asgi_handler() == []


def test_the_registered_checks_pass_for_the_eco_project() -> None:
    messages = checks.run_checks(tags=None)
    assert [m.id for m in messages if (m.id or "").startswith("structured_signals")] == []
