"""The cookbook with the shared cache's invalidation switched off: the control of tests/test_sharedcache_redis_e2e.py.

Writes replace no token and lease no pending marker in the store, so an entry
another process cached stays current after the row changed: the checker must
see stale reads.  The switch is made here, in the test, never in the package.
"""

from webpy_txscope._cachestore import LocalStore, RedisStore


def _no_invalidation(self, tables, writer):
    """Tell no other process anything."""


for _store in (LocalStore, RedisStore):
    _store.begin_write = _store.end_write = _no_invalidation

from app import application  # noqa: E402,F401
