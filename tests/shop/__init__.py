"""A small Django project with a database, for the INSTALLED_APPS integration tests.

`python -m shop.scenarios NAME` runs one scenario and prints its outcome as
JSON on the last line. The environment chooses the database file (SHOP_DB),
STRUCTURED_SIGNALS (SHOP_STRUCTURED_SIGNALS, JSON) and the handler asgi.py
serves (SHOP_ASGI: "structured" or "stock").
"""
