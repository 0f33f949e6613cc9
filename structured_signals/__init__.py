"""Django signals whose async receivers keep the caller's request state.

`structured_signals.asgi` (the ASGI handler) is a public submodule that this
package does not import.
"""

from __future__ import annotations

from structured_signals._context import MISSING, Conflict, ContextConflictError
from structured_signals._signal import StructuredSignal, upgrade

__all__ = ("MISSING", "Conflict", "ContextConflictError", "StructuredSignal", "upgrade")
