from __future__ import annotations

from django.apps import AppConfig


class E2EProjectConfig(AppConfig):
    name = "e2e_project"

    def ready(self) -> None:
        from e2e_project import state

        state.connect_receivers()
