"""The project's asgi.py, as its settings pick it.

ECO_APM: "sentry", "otel" or "ddtrace", set up first. ECO_ENTRY: "django"
(Django's own get_asgi_application, unchanged: the installed app makes it
hand out the structured handler), "structured" (structured_signals.asgi's).
ECO_ROUTER=channels: behind Channels' ProtocolTypeRouter.
"""

from __future__ import annotations

import os

from eco_project import telemetry

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "eco_project.settings")
APM = os.environ.get("ECO_APM", "")
telemetry.install(APM)

from django.core import asgi as django_asgi  # noqa: E402

from structured_signals import asgi as structured_asgi  # noqa: E402

application: object
if os.environ.get("ECO_ENTRY", "django") == "structured":
    application = structured_asgi.get_asgi_application()
else:
    application = django_asgi.get_asgi_application()

if APM == "otel":
    from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware

    application = OpenTelemetryMiddleware(application)

if os.environ.get("ECO_ROUTER") == "channels":
    from channels.routing import ProtocolTypeRouter

    application = ProtocolTypeRouter({"http": application})
