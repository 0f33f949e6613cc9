"""Run Django's own test modules with structured_signals swapped in.

Usage: python django_suite.py DJANGO_TESTS_DIR LABEL [LABEL ...]

DJANGO_TESTS_DIR is the tests/ folder of the installed Django's source
distribution (the `django_tests` nox session downloads it). The swap happens
before Django creates its built-in signals, so `request_started`,
`post_save`, ... and every `Signal()` the tests create are StructuredSignals,
and every ASGIHandler the tests create is a StructuredASGIHandler.
"""

from __future__ import annotations

import os
import runpy
import sys

import django.dispatch
import django.dispatch.dispatcher

from structured_signals import StructuredSignal


def main(tests_dir: str, labels: list[str]) -> None:
    created_too_early = [
        name for name in ("django.core.signals", "django.db.models.signals") if name in sys.modules
    ]
    if created_too_early:
        raise SystemExit(f"signals were created before the swap: {created_too_early}")
    django.dispatch.Signal = StructuredSignal  # type: ignore[misc]
    django.dispatch.dispatcher.Signal = StructuredSignal  # type: ignore[misc]

    from django.core import asgi as django_asgi
    from django.core import signals as core_signals
    from django.core.handlers import asgi as django_asgi_handlers
    from django.db.models import signals as model_signals

    from structured_signals import asgi

    django_asgi.get_asgi_application = asgi.get_asgi_application
    django_asgi_handlers.ASGIHandler = asgi.StructuredASGIHandler  # type: ignore[misc]

    for signal in (core_signals.request_started, model_signals.post_save):
        if not isinstance(signal, StructuredSignal):
            raise SystemExit(f"{signal!r} is not a StructuredSignal: the swap came too late")

    tests_dir = os.path.abspath(tests_dir)
    os.chdir(tests_dir)
    sys.path.insert(0, tests_dir)
    sys.argv = ["runtests.py", "--parallel=1", *labels]
    runpy.run_path("runtests.py", run_name="__main__")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
