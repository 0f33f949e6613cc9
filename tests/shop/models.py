from __future__ import annotations

from django.db import models
from django.dispatch import Signal

# A project's own signal, created before the app registry is ready.
order_paid = Signal()


class Order(models.Model):
    name: models.CharField[str, str] = models.CharField(max_length=50)
