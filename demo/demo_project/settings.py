from __future__ import annotations

SECRET_KEY = "e2e-only"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
ROOT_URLCONF = "demo_project.urls"
INSTALLED_APPS = ["demo_project"]
MIDDLEWARE = ["demo_project.state.remember_header_middleware"]
DATABASES: dict[str, dict[str, str]] = {}
USE_TZ = True
LOGGING_CONFIG = None
