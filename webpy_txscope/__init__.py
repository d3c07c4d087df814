"""One SQLObject transaction per web.py request: no stale reads across processes.

>>> from webpy_txscope import txscope
>>> load_sqlo = txscope("sqlite:/:memory:")      # app.add_processor(load_sqlo)

See README.org for the rules a scope ends by, and the cookbook for a whole app.

The public names are imported on first use, so that loading the package (as
pytest does for the plugin in every run) costs nothing until it is used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # what type checkers see; at run time each name is imported on first use
    from ._errors import ConfigurationError, ConnectionLost, DatabaseUnavailable, ErrorKind, classify
    from ._metrics import check_scope_ages, export_prometheus, oldest_scope_age, open_scopes, stats
    from ._options import UNSET, ScopeOptions
    from ._policy import default_commit_veto, strict_commit_veto
    from ._uri import mask
    from .sharedcache import SharedCache, invalidate
    from ._cachelisten import install_cache_triggers, remove_cache_triggers
    from .core import CommitFailed, Outcome, Scope, ScopeManager, current_scope, doom, on_commit
    from .webpy import no_scope, scope_options, txscope
    from .wsgi import TxScopeMiddleware

_PUBLIC = {
    "ConfigurationError": "._errors",
    "ConnectionLost": "._errors",
    "DatabaseUnavailable": "._errors",
    "ErrorKind": "._errors",
    "classify": "._errors",
    "check_scope_ages": "._metrics",
    "export_prometheus": "._metrics",
    "oldest_scope_age": "._metrics",
    "open_scopes": "._metrics",
    "stats": "._metrics",
    "UNSET": "._options",
    "ScopeOptions": "._options",
    "default_commit_veto": "._policy",
    "strict_commit_veto": "._policy",
    "mask": "._uri",
    "SharedCache": ".sharedcache",
    "invalidate": ".sharedcache",
    "install_cache_triggers": "._cachelisten",
    "remove_cache_triggers": "._cachelisten",
    "CommitFailed": ".core",
    "Outcome": ".core",
    "Scope": ".core",
    "ScopeManager": ".core",
    "current_scope": ".core",
    "doom": ".core",
    "on_commit": ".core",
    "no_scope": ".webpy",
    "scope_options": ".webpy",
    "txscope": ".webpy",
    "TxScopeMiddleware": ".wsgi",
}

__all__ = [
    "CommitFailed",
    "ConfigurationError",
    "ConnectionLost",
    "DatabaseUnavailable",
    "ErrorKind",
    "Outcome",
    "Scope",
    "ScopeManager",
    "ScopeOptions",
    "SharedCache",
    "TxScopeMiddleware",
    "UNSET",
    "check_scope_ages",
    "classify",
    "current_scope",
    "default_commit_veto",
    "doom",
    "export_prometheus",
    "install_cache_triggers",
    "invalidate",
    "mask",
    "no_scope",
    "oldest_scope_age",
    "on_commit",
    "open_scopes",
    "remove_cache_triggers",
    "scope_options",
    "stats",
    "strict_commit_veto",
    "txscope",
]


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'webpy_txscope' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))
