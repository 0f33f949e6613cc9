"""demo_project's settings, with structured_signals installed and the toolbar on request.

ECO_WITHOUT_US=1 leaves structured_signals out (the baseline an APM is compared
with); ECO_TOOLBAR=1 adds django-debug-toolbar.
"""

from __future__ import annotations

import os

from demo_project import settings as demo
from demo_project.settings import *  # noqa: F403

WITHOUT_US = os.environ.get("ECO_WITHOUT_US") == "1"
TOOLBAR = os.environ.get("ECO_TOOLBAR") == "1"

ROOT_URLCONF = "eco_project.urls"
# structured_signals last, as the README says: the toolbar's panels (toolbar 8
# imports GeoDjango's GEOS wrapper) are loaded by the time it is ready.
INSTALLED_APPS = [
    *(["django.contrib.staticfiles", "debug_toolbar"] if TOOLBAR else []),
    *demo.INSTALLED_APPS,
    *([] if WITHOUT_US else ["structured_signals"]),
]
MIDDLEWARE = [
    *(["debug_toolbar.middleware.DebugToolbarMiddleware"] if TOOLBAR else []),
    *demo.MIDDLEWARE,
]
DEBUG = TOOLBAR
INTERNAL_IPS = ["127.0.0.1"]
STATIC_URL = "/static/"
TEMPLATES = [
    {"BACKEND": "django.template.backends.django.DjangoTemplates", "APP_DIRS": True},
]
DEBUG_TOOLBAR_CONFIG = {
    "SHOW_TOOLBAR_CALLBACK": "eco_project.urls.show_toolbar",
    # The toolbar refuses to run under tests unless told.
    "IS_RUNNING_TESTS": False,
}
