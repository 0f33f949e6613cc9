"""The project's asgi.py: Django's stock handler or the structured one (SHOP_ASGI)."""

from __future__ import annotations

import os

if os.environ.get("SHOP_ASGI") == "stock":
    from django.core.asgi import get_asgi_application
else:
    from structured_signals.asgi import get_asgi_application

application = get_asgi_application()
