"""Run one scenario against the shop project and print its outcome as JSON."""

from __future__ import annotations

import asyncio
import contextvars
import io
import json
import os
import socket
import sys
import threading
import time
from typing import TYPE_CHECKING, Any

import django
import httpx
import uvicorn

django.setup()

from django.core import signals as core_signals  # noqa: E402
from django.core.files.storage import default_storage  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.core.management.base import SystemCheckError  # noqa: E402
from django.db.models import signals as model_signals  # noqa: E402
from django.dispatch import Signal  # noqa: E402
from django.utils.functional import empty  # noqa: E402

from shop.models import Order, order_paid  # noqa: E402
from shop.views import count_orders  # noqa: E402
from structured_signals import StructuredSignal  # noqa: E402

if TYPE_CHECKING:
    from collections.abc import Callable

last_saved: contextvars.ContextVar[str] = contextvars.ContextVar("last_saved")


async def remember_saved(instance: Order, **kwargs: Any) -> None:
    last_saved.set(instance.name)


def asave() -> dict[str, Any]:
    """`await order.asave()`: post_save's async receiver writes a ContextVar."""
    call_command("migrate", run_syncdb=True, verbosity=0)
    model_signals.post_save.connect(remember_saved, sender="shop.Order")

    async def view() -> str | None:
        await Order(name="espresso").asave()
        return last_saved.get(None)

    return {"last_saved": asyncio.run(view()), "rows": Order.objects.count()}


def sync_view_save(loop: str) -> dict[str, Any]:
    """Under uvicorn on `loop`: a sync view saves, an async post_save receiver uses the ORM."""
    call_command("migrate", run_syncdb=True, verbosity=0)
    model_signals.post_save.connect(count_orders, sender="shop.Order")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = uvicorn.Config(
        "shop.asgi:application", host="127.0.0.1", port=port, loop=loop, log_level="warning"
    )
    server = uvicorn.Server(config)
    threading.Thread(target=server.run, daemon=True).start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.01)
    try:
        response = httpx.get(f"http://127.0.0.1:{port}/save/", timeout=20)
    except httpx.TimeoutException:
        return {"status": "no answer in 20 s"}
    finally:
        server.should_exit = True
    return {"status": response.status_code, **response.json()}


def signals() -> dict[str, Any]:
    """What the app made of Django's built-in signals, and of the others."""
    builtins = {
        "request_started": core_signals.request_started,
        "got_request_exception": core_signals.got_request_exception,
        "setting_changed": core_signals.setting_changed,
        "post_save": model_signals.post_save,
        "m2m_changed": model_signals.m2m_changed,
    }
    return {
        "structured": {name: isinstance(s, StructuredSignal) for name, s in builtins.items()},
        "post_save_is_model_signal": isinstance(model_signals.post_save, model_signals.ModelSignal),
        "post_save_context": getattr(model_signals.post_save, "context", None),
        "post_save_timeout": getattr(model_signals.post_save, "timeout", None),
        "project_signal_structured": isinstance(order_paid, StructuredSignal),
        "later_signal_structured": isinstance(Signal(), StructuredSignal),
    }


def check() -> dict[str, Any]:
    """`manage.py check`: its output, and whether it failed."""
    output = io.StringIO()
    try:
        call_command("check", stdout=output, stderr=output)
    except SystemCheckError as error:
        return {"failed": True, "output": output.getvalue() + str(error)}
    return {"failed": False, "output": output.getvalue()}


def storage() -> dict[str, Any]:
    """Whether default_storage was built by the time the project is set up."""
    return {"default_storage_built": vars(default_storage)["_wrapped"] is not empty}


SCENARIOS: dict[str, Callable[..., dict[str, Any]]] = {
    "asave": asave,
    "sync_view_save": sync_view_save,
    "signals": signals,
    "check": check,
    "storage": storage,
}

if __name__ == "__main__":
    print(json.dumps(SCENARIOS[sys.argv[1]](*sys.argv[2:])), flush=True)
    # Not a normal exit: a thread a scenario left hanging would keep the process alive.
    os._exit(0)
