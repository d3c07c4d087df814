"""One SQLObject transaction per web.py request: no stale reads across processes.

>>> from webpy_txscope import txscope
>>> load_sqlo = txscope("sqlite:/:memory:")      # app.add_processor(load_sqlo)

See README.org for the rules a scope ends by, and the cookbook for a whole app.
"""

from ._errors import ConfigurationError, ConnectionLost, DatabaseUnavailable, ErrorKind, classify
from ._metrics import export_prometheus, oldest_scope_age, open_scopes, stats
from ._policy import default_commit_veto, strict_commit_veto
from ._uri import mask
from .core import CommitFailed, Scope, ScopeManager, current_scope, doom, on_commit
from .webpy import no_scope, scope_options, txscope


def __getattr__(name):
    # The WSGI middleware pulls in nothing web.py-specific; import it on demand.
    if name == "TxScopeMiddleware":
        from .wsgi import TxScopeMiddleware

        return TxScopeMiddleware
    raise AttributeError("module 'webpy_txscope' has no attribute %r" % name)


__all__ = [
    "CommitFailed",
    "ConfigurationError",
    "ConnectionLost",
    "DatabaseUnavailable",
    "ErrorKind",
    "Scope",
    "ScopeManager",
    "TxScopeMiddleware",
    "classify",
    "current_scope",
    "default_commit_veto",
    "doom",
    "export_prometheus",
    "mask",
    "no_scope",
    "oldest_scope_age",
    "on_commit",
    "open_scopes",
    "scope_options",
    "stats",
    "strict_commit_veto",
    "txscope",
]
