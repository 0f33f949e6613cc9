"""django-debug-toolbar's signals panel lists every receiver of the upgraded signals.

Set up in this process by pytest-django with the toolbar installed after
structured_signals: with toolbar 8, GeoDjango modules are imported, whose
GEOS library is a lazy object the app must not evaluate.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from asgiref.sync import async_to_sync
from demo_project import state
from django.core.signals import request_finished, request_started

from structured_signals import StructuredSignal

if TYPE_CHECKING:
    from django.test import AsyncClient

RECEIVERS = [
    state.started_sync,
    state.started_async,
    state.started_clock,
    state.finished_sync,
    state.finished_async,
]


def test_the_signals_panel_lists_every_receiver_of_the_structured_signals(
    async_client: AsyncClient,
) -> None:
    # The demo's receivers read the ASGI scope: the async client sends one.
    assert isinstance(request_started, StructuredSignal)
    assert isinstance(request_finished, StructuredSignal)
    get = async_to_sync(async_client.get)
    page = get("/page/", headers={"X-Request-Id": "toolbar"})
    match = re.search(r'data-request-id="(\w+)"', page.content.decode())
    assert match is not None, "the toolbar is not on the page"
    panel = get(
        "/__debug__/render_panel/", {"request_id": match.group(1), "panel_id": "SignalsPanel"}
    )
    content = panel.json()["content"]
    for name in ("request_started", "request_finished", "setting_changed", "post_save"):
        assert name in content
    for receiver in RECEIVERS:
        assert receiver.__name__ in content
