from __future__ import annotations

from django.urls import path

from shop.views import save_order

urlpatterns = [path("save/", save_order)]
