from __future__ import annotations

import django
import pytest
from django.conf import settings
from support import LOOP_FACTORIES, Runner, runner

if not settings.configured:
    settings.configure(DEBUG=False, USE_TZ=True, LOGGING_CONFIG=None)
    django.setup()


@pytest.fixture(params=sorted(LOOP_FACTORIES))
def run(request: pytest.FixtureRequest) -> Runner:
    """Run a coroutine to completion on a new event loop of each kind."""
    return runner(LOOP_FACTORIES[request.param])


def pytest_report_header() -> str:
    import structured_signals

    # The nox sessions test the built wheel: this path shows which copy ran.
    return f"structured_signals: {structured_signals.__file__}"
