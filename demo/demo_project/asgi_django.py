"""The project's asgi.py as Django generates it: the stock handler."""

from __future__ import annotations

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "demo_project.settings")

from django.core.asgi import get_asgi_application

application = get_asgi_application()
