"""pytest-django's async client and settings fixture, with the app upgrading Django's signals."""

from __future__ import annotations

import contextvars
from typing import TYPE_CHECKING, Any

import pytest
from asgiref.sync import async_to_sync
from django.test.signals import setting_changed

if TYPE_CHECKING:
    from collections.abc import Iterator

    from django.test import AsyncClient
    from pytest_django.fixtures import Settings

changed: contextvars.ContextVar[str] = contextvars.ContextVar("changed")


def test_the_async_client_view_sees_what_request_started_receivers_set(
    async_client: AsyncClient,
) -> None:
    # AsyncClient sends request_started with asend, which the app made structured.
    response = async_to_sync(async_client.get)("/whoami/", headers={"X-Request-Id": "async"})
    assert response.json()["request_id"] == response.json()["local_id"] == "async"


def test_the_async_client_sync_view_sees_what_request_started_receivers_set(
    async_client: AsyncClient,
) -> None:
    response = async_to_sync(async_client.get)("/whoami-sync/", headers={"X-Request-Id": "sync"})
    assert response.json()["request_id"] == response.json()["local_id"] == "sync"


async def remember_setting(setting: str, **kwargs: Any) -> None:
    changed.set(setting)


@pytest.fixture
def setting_receiver() -> Iterator[None]:
    setting_changed.connect(remember_setting)
    yield
    setting_changed.disconnect(remember_setting)


@pytest.mark.usefixtures("setting_receiver")
def test_the_settings_fixture_sends_setting_changed_whose_async_receiver_writes_reach_the_test(
    settings: Settings,
) -> None:
    settings.ECO_FLAG = True
    assert changed.get() == "ECO_FLAG"
