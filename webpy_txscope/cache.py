"""A dogpile.cache backend that keeps values for one scope: ``"webpy_txscope.transaction"``.

>>> from dogpile.cache import make_region
>>> import webpy_txscope.cache  # registers the backend
>>> per_request = make_region().configure("webpy_txscope.transaction")

Values live on the current scope's transaction and vanish with it, whether it
commits or rolls back, so what one request read from the database is never
served to another request, thread or process: the same freshness the scope
gives SQLObject's own cache.  Outside a scope nothing is cached: ``get``
misses and ``set`` does nothing.  Use it for what one request computes more
than once (a permission check, a count shown twice on a page); anything that
must outlive a request needs a shared backend and explicit invalidation.
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Sequence

from dogpile.cache.api import NO_VALUE, CacheBackend
from dogpile.cache.region import register_backend

from .core import current_scope

NAME = "webpy_txscope.transaction"

_ATTRIBUTE = "_txscope_cache"


def _values() -> Optional[Dict[Any, Any]]:
    """The current transaction's cached values, or None outside a scope."""
    scope = current_scope()
    if scope is None:
        return None
    return vars(scope.tx).setdefault(_ATTRIBUTE, {})


class TransactionBackend(CacheBackend):
    """Values cached on the current scope's transaction; see the module's docstring."""

    def __init__(self, arguments: Mapping[str, Any]):
        if arguments:
            raise ValueError("the %s backend takes no arguments, got %s" % (NAME, ", ".join(sorted(arguments))))

    def get(self, key):
        values = _values()
        return NO_VALUE if values is None else values.get(key, NO_VALUE)

    def get_multi(self, keys: Sequence):
        values = _values()
        if values is None:
            return [NO_VALUE] * len(keys)
        return [values.get(key, NO_VALUE) for key in keys]

    def set(self, key, value) -> None:
        values = _values()
        if values is not None:
            values[key] = value

    def set_multi(self, mapping: Mapping) -> None:
        values = _values()
        if values is not None:
            values.update(mapping)

    def delete(self, key) -> None:
        values = _values()
        if values is not None:
            values.pop(key, None)

    def delete_multi(self, keys: Sequence) -> None:
        values = _values()
        if values is not None:
            for key in keys:
                values.pop(key, None)


register_backend(NAME, __name__, "TransactionBackend")

__all__ = ["NAME", "TransactionBackend"]
