"""Counters and the open-scope gauge, per process.

Reading them is cheap and lock-free; :func:`stats` returns a snapshot.  When
``prometheus_client`` is installed, :func:`export_prometheus` registers the
same figures with it.
"""

from __future__ import annotations

import time
from typing import Dict

_counts: Dict[str, int] = {"commit": 0, "rollback": 0, "failed": 0, "retry": 0}
_open: Dict[int, float] = {}


def opened(scope) -> None:
    _open[id(scope)] = scope.started


def closed(scope) -> None:
    _open.pop(id(scope), None)


def count(outcome: str) -> None:
    _counts[outcome] += 1


def open_scopes() -> int:
    """How many scopes are open in this process right now."""
    return len(_open)


def oldest_scope_age() -> float:
    """Seconds the longest-open scope of this process has been open (0.0 if none)."""
    started = list(_open.values())
    return time.monotonic() - min(started) if started else 0.0


def stats() -> Dict[str, float]:
    """A snapshot: commits, rollbacks, failed commits, retries, open scopes, oldest age.

    >>> sorted(stats())
    ['commits', 'failed_commits', 'oldest_scope_age', 'open_scopes', 'retries', 'rollbacks']
    """
    return {
        "commits": _counts["commit"],
        "rollbacks": _counts["rollback"],
        "failed_commits": _counts["failed"],
        "retries": _counts["retry"],
        "open_scopes": open_scopes(),
        "oldest_scope_age": oldest_scope_age(),
    }


_exported = False


def export_prometheus(registry=None) -> None:
    """Publish the figures through ``prometheus_client`` (once per process)."""
    global _exported
    if _exported:
        return
    try:
        from prometheus_client import REGISTRY
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
    except ImportError:
        raise ImportError("export_prometheus() needs prometheus_client: pip install 'webpy_txscope[prometheus]'") from None

    class _Collector:
        def collect(self):
            snapshot = stats()
            for name in ("commits", "rollbacks", "failed_commits", "retries"):
                yield CounterMetricFamily("txscope_" + name, "Scopes ended: " + name.replace("_", " "),
                                          value=snapshot[name])
            yield GaugeMetricFamily("txscope_open_scopes", "Scopes open now", value=snapshot["open_scopes"])
            yield GaugeMetricFamily("txscope_oldest_scope_age_seconds", "Age of the longest-open scope",
                                    value=snapshot["oldest_scope_age"])

    (registry or REGISTRY).register(_Collector())
    _exported = True
