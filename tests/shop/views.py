"""A sync view that saves an Order, and an async post_save receiver that uses the ORM."""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest, JsonResponse

from shop.models import Order

# Invariant: one request per process (a scenario), so module state is its own.
seen: dict[str, Any] = {}


async def count_orders(instance: Order, **kwargs: Any) -> None:
    """What any ORM call does from an async receiver: await sync_to_async."""
    seen["orders"] = await Order.objects.acount()


def save_order(request: HttpRequest) -> JsonResponse:
    Order(name="espresso").save()
    return JsonResponse({"orders_counted_by_the_receiver": seen.get("orders")})
