"""Counters and the open-scope gauge, per process.

Reading them is cheap and lock-free; :func:`stats` returns a snapshot.  When
``prometheus_client`` is installed, :func:`export_prometheus` registers the
same figures with it.  Reading the gauge also warns about scopes that are
still open past their limit (:func:`check_scope_ages`): a request stuck in its
transaction holds a connection and, on MariaDB, an old snapshot.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from typing import Any, Dict, Optional

log = logging.getLogger("webpy_txscope")

# "untouched": scopes that ended without touching the database, so with
# nothing to commit or roll back (see ScopeManager.close_untouched).
_counts: Dict[str, int] = {"commit": 0, "rollback": 0, "failed": 0, "retry": 0, "untouched": 0,
                           # the shared cache (webpy_txscope.sharedcache): this process's reads
                           # and the tokens its writes replaced
                           "cache_hits": 0, "cache_misses": 0, "cache_bypasses": 0, "cache_invalidations": 0,
                           # tables whose tokens the trigger listener replaced (webpy_txscope._cachelisten)
                           "cache_trigger_invalidations": 0}
# Reads routed by replicas= (see webpy_txscope/replicas.py): served by a
# replica, served by the primary although a replica was wanted (fallbacks),
# routed after waiting for a replica to replay, and rerun on the primary.
_replica_counts: Dict[str, int] = {"replica_reads": 0, "primary_reads": 0, "replica_fallbacks": 0,
                                   "replica_waits": 0, "replica_reruns": 0}
# Every request passes here twice: one dict operation each way, no tuple.
_open: Dict[Any, float] = {}  # open scope -> when it opened (its manager: scope.manager)
_warned: set = set()  # open scopes already reported as too old


def closed(scope) -> None:
    _open.pop(scope, None)
    if _warned:
        _warned.discard(scope)


def count(outcome: str) -> None:
    _counts[outcome] += 1


def open_scopes() -> int:
    """How many scopes are open in this process right now."""
    return len(_open)


def oldest_scope_age() -> float:
    """Seconds the longest-open scope of this process has been open (0.0 if none).

    Reading it runs :func:`check_scope_ages` with each scope's own ``max_age``.
    """
    check_scope_ages()
    started = list(_open.values())
    return time.monotonic() - min(started) if started else 0.0


def check_scope_ages(limit: Optional[float] = None) -> int:
    """Warn about scopes still open longer than *limit* seconds; return how many there are.

    Without *limit*, each scope is held to the ``max_age`` of its txscope (no
    limit if that is None).  Each scope is logged once, at WARNING on the
    ``webpy_txscope`` logger; :class:`~webpy_txscope.ScopeManager` logs it
    again with its whole duration when it finally closes.
    """
    now = time.monotonic()
    over = 0
    for key, started in list(_open.items()):
        manager = key.manager
        bound = getattr(manager, "max_age", None) if limit is None else limit
        age = now - started
        if bound is None or age <= bound:
            continue
        over += 1
        if key not in _warned:
            _warned.add(key)
            log.warning("a scope on %s has been open %.1fs and is still open, longer than the limit "
                        "of %.1fs", manager.name, age, bound)
    return over


def stats() -> Dict[str, float]:
    """A snapshot: commits, rollbacks, failed commits, retries, untouched scopes, open scopes, oldest age.

    A scope that never touched the database counts as ``untouched``, not as
    a commit or a rollback: it had nothing to commit or roll back.  With
    ``replicas=``, the reads routed: ``replica_reads``, ``primary_reads``
    (safe-method requests the primary served), ``replica_fallbacks`` (of
    those, the ones no replica had replayed far enough in time, or none was
    up), ``replica_waits`` (replica reads that waited for the replay) and
    ``replica_reruns`` (requests run again on the primary after a write on
    a replica or a replica lost mid-request).

    With ``cache=``: ``cache_hits``, ``cache_misses``, ``cache_bypasses``
    (statements the cache could not serve or store, said why at DEBUG) and
    ``cache_invalidations`` (tokens this process's writes replaced); with
    ``SharedCache(listen=...)``, ``cache_trigger_invalidations`` (tables whose
    tokens the listener replaced: writes the triggers announced, and every
    table with the trigger after the listener reconnected).

    >>> sorted(stats())[:6]
    ['cache_bypasses', 'cache_hits', 'cache_invalidations', 'cache_misses', 'cache_trigger_invalidations', 'commits']
    """
    check_scope_ages()
    started = list(_open.values())  # one snapshot for both figures: they never disagree
    return {
        "commits": _counts["commit"],
        "rollbacks": _counts["rollback"],
        "failed_commits": _counts["failed"],
        "retries": _counts["retry"],
        "untouched": _counts["untouched"],
        "cache_hits": _counts["cache_hits"],
        "cache_misses": _counts["cache_misses"],
        "cache_bypasses": _counts["cache_bypasses"],
        "cache_invalidations": _counts["cache_invalidations"],
        "cache_trigger_invalidations": _counts["cache_trigger_invalidations"],
        "open_scopes": len(started),
        "oldest_scope_age": time.monotonic() - min(started) if started else 0.0,
        **_replica_counts,
    }


_exported: "weakref.WeakSet" = weakref.WeakSet()
_export_lock = threading.Lock()


def export_prometheus(registry=None) -> None:
    """Publish the figures through ``prometheus_client``, into *registry* (default: its global ``REGISTRY``).

    Calling it again with the same registry does nothing.
    """
    try:
        from prometheus_client import REGISTRY
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
    except ImportError:
        raise ImportError("export_prometheus() needs prometheus_client: "
                          "pip install 'webpy_txscope[prometheus]'") from None

    class _Collector:
        def collect(self):
            snapshot = stats()
            for name in ("commits", "rollbacks", "failed_commits", "retries", "untouched"):
                yield CounterMetricFamily("txscope_" + name, "Scopes ended: " + name.replace("_", " "),
                                          value=snapshot[name])
            yield GaugeMetricFamily("txscope_open_scopes", "Scopes open now", value=snapshot["open_scopes"])
            yield GaugeMetricFamily("txscope_oldest_scope_age_seconds", "Age of the longest-open scope",
                                    value=snapshot["oldest_scope_age"])

    registry = REGISTRY if registry is None else registry
    with _export_lock:
        if registry not in _exported:
            registry.register(_Collector())
            _exported.add(registry)
