"""The demo project (demo/demo_project) with the packages projects run beside us."""
