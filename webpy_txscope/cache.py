"""A dogpile.cache backend that keeps values for one scope: ``"webpy_txscope.transaction"``.

>>> from dogpile.cache import make_region
>>> import webpy_txscope.cache  # registers the backend
>>> per_request = make_region().configure("webpy_txscope.transaction")

Values belong to the current scope's transaction and vanish with it, whether
it commits or rolls back, so what one request read from the database is never
served to another request, thread or process: the same freshness the scope
gives SQLObject's own cache.  Each region has its own values.  There is no
lock per key: two requests computing the same key each compute their own
value at once, never one waiting for the other.  Outside a scope nothing is
cached: ``get`` misses and ``set`` does nothing.  Use it for what one request computes more
than once (a permission check, a count shown twice on a page); anything that
must outlive a request needs a shared backend and explicit invalidation.
"""

from __future__ import annotations

import weakref
from typing import Any, Dict, Iterable, Mapping, Optional

from dogpile.cache.api import NO_VALUE, CacheBackend, CacheMutex
from dogpile.cache.region import register_backend

from .core import current_scope

NAME = "webpy_txscope.transaction"


class _Unshared(CacheMutex):
    """The "lock" dogpile takes around computing a value: none at all.

    dogpile keeps one mutex per key for the whole process, so that one thread
    computes a value the others then read.  Here no value is ever shared
    between transactions: two requests computing the same key would only wait
    for each other, and, if the computation takes a row lock, deadlock where
    the database cannot see it.  Within one transaction a computation runs
    once anyway, on its own thread.
    """

    def acquire(self, wait: bool = True) -> bool:
        return True

    def release(self) -> None:
        pass

    def locked(self) -> bool:
        return False


_UNSHARED = _Unshared()


class TransactionBackend(CacheBackend):
    """Values cached on the current scope's transaction; see the module's docstring.

    Each region has its own backend, hence its own values.  They are kept
    here, keyed weakly by the transaction, and not on the transaction
    itself: the scope tells an untouched transaction by its attributes.
    """

    def __init__(self, arguments: Mapping[str, Any]):
        if arguments:
            raise ValueError(f"the {NAME} backend takes no arguments, got {', '.join(sorted(arguments))}")
        self._by_transaction: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def _values(self, create: bool = False) -> Optional[Dict[Any, Any]]:
        """This region's values in the current scope; None outside a scope (or none yet)."""
        scope = current_scope()
        if scope is None:
            return None
        # The scope of an untouched request is reused, transaction included, by
        # the thread's next request: values count only for the opening they
        # were stored in, which scope._state (a new tuple at every open) names.
        opening = scope._state
        entry = self._by_transaction.get(scope.tx)
        if entry is not None and entry[0] is opening:
            return entry[1]
        if not create:
            return None
        values: Dict[Any, Any] = {}
        self._by_transaction[scope.tx] = (opening, values)
        return values

    def get_mutex(self, key) -> CacheMutex:
        return _UNSHARED

    def get(self, key):
        values = self._values()
        return NO_VALUE if values is None else values.get(key, NO_VALUE)

    def get_multi(self, keys: Iterable[str]):
        values = self._values()
        if values is None:
            return [NO_VALUE for _ in keys]
        return [values.get(key, NO_VALUE) for key in keys]

    def set(self, key, value) -> None:
        values = self._values(create=True)
        if values is not None:
            values[key] = value

    def set_multi(self, mapping: Mapping) -> None:
        values = self._values(create=True)
        if values is not None:
            values.update(mapping)

    def delete(self, key) -> None:
        values = self._values()
        if values is not None:
            values.pop(key, None)

    def delete_multi(self, keys: Iterable[str]) -> None:
        values = self._values()
        if values is not None:
            for key in keys:
                values.pop(key, None)


register_backend(NAME, __name__, "TransactionBackend")

__all__ = ["NAME", "TransactionBackend"]
