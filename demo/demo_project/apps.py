from __future__ import annotations

from django.apps import AppConfig


class E2EProjectConfig(AppConfig):
    name = "demo_project"

    def ready(self) -> None:
        from demo_project import state

        state.connect_receivers()
