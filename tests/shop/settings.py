from __future__ import annotations

import json
import os

SECRET_KEY = "shop-tests-only"
DEBUG = False
INSTALLED_APPS = ["django.contrib.contenttypes", "structured_signals", "shop"]
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": os.environ["SHOP_DB"]}}
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
USE_TZ = True
STRUCTURED_SIGNALS = json.loads(os.environ.get("SHOP_STRUCTURED_SIGNALS", "{}"))
ROOT_URLCONF = "shop.urls"
ALLOWED_HOSTS = ["127.0.0.1"]
