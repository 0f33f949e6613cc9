"""The settings pytest-django sets up in the test process: eco_project with the toolbar."""

from __future__ import annotations

import os

os.environ["ECO_TOOLBAR"] = "1"

from eco_project.settings import *  # noqa: F403
