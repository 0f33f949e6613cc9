"""The project's asgi.py, switched to structured_signals: one changed import."""

from __future__ import annotations

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "demo_project.settings")

from structured_signals.asgi import get_asgi_application

application = get_asgi_application()
