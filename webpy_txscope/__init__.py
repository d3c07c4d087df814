"""One SQLObject transaction per web.py request: no stale reads across processes.

>>> from webpy_txscope import txscope
>>> load_sqlo = txscope("sqlite:/:memory:")      # app.add_processor(load_sqlo)

See README.org for the rules a scope ends by, and the cookbook for a whole app.

The public names are imported on first use, so that loading the package (as
pytest does for the plugin in every run) costs nothing until it is used.
"""

import importlib

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
    "default_commit_veto": "._policy",
    "strict_commit_veto": "._policy",
    "mask": "._uri",
    "CommitFailed": ".core",
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

__all__ = sorted(_PUBLIC)


def __getattr__(name):
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError("module 'webpy_txscope' has no attribute %r" % name)
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_PUBLIC))
