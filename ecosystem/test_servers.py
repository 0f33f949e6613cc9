"""Our promise under every ASGI server, on each loop it offers, and behind Channels."""

from __future__ import annotations

import pytest
from scenario import check_request_state
from servers import SERVERS, serve


@pytest.mark.parametrize(
    ("server", "loop"), SERVERS, ids=[f"{server}-{loop}" for server, loop in SERVERS]
)
def test_request_state_holds_under_the_server(server: str, loop: str) -> None:
    with serve(server, loop) as url:
        check_request_state(url, f"{server}-{loop}")


@pytest.mark.parametrize("entry", ["django", "structured"])
def test_request_state_holds_behind_a_channels_protocol_type_router(entry: str) -> None:
    with serve("daphne", ECO_ROUTER="channels", ECO_ENTRY=entry) as url:
        check_request_state(url, f"channels-{entry}")
