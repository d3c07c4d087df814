"""The options of a scope, defined once for txscope, TxScopeMiddleware and ScopeManager.

:class:`ScopeOptions` names them for type checkers (``**options:
Unpack[ScopeOptions]``); :class:`Settings` holds them checked, so that a bad
value fails when the app starts, never at its first request or first retry.
"""

from __future__ import annotations

import enum
import inspect
import math
from dataclasses import dataclass, fields
from typing import Any, Mapping, TypedDict

from ._errors import ConfigurationError
from ._policy import CommitVeto, default_commit_veto


class Unset(enum.Enum):
    """The type of :data:`UNSET`: "keep the scope's own setting"."""

    UNSET = "UNSET"

    def __repr__(self) -> str:
        return "UNSET"


#: An argument not given (``None`` is a value: "the server's default isolation").
UNSET = Unset.UNSET

ISOLATION_LEVELS = ("READ COMMITTED", "REPEATABLE READ", "SERIALIZABLE")


class ScopeOptions(TypedDict, total=False):
    """The keyword options of ``txscope``, ``TxScopeMiddleware`` and ``ScopeManager``."""

    attempts: int
    isolation: str | None
    readonly: bool
    commit_veto: CommitVeto
    retry_backoff: float
    retry_after: int
    max_age: float | None
    replicas: list[str] | None
    consistency: str
    replica_wait: float
    max_replica_lag: float | None
    cache: Any


#: What ``consistency=`` accepts (see webpy_txscope/replicas.py).
CONSISTENCY = ("session", "strong")


def normalize_isolation(level: str | None) -> str | None:
    """Check an isolation level name and return its canonical spelling.

    >>> normalize_isolation("repeatable_read")
    'REPEATABLE READ'
    """
    if level is None:
        return None
    name = " ".join(str(level).replace("_", " ").upper().split())
    if name not in ISOLATION_LEVELS:
        levels = ", ".join(map(repr, ISOLATION_LEVELS))
        raise ConfigurationError(f"unknown isolation level {level!r}: use one of {levels}")
    return name


def _finite(name: str, value: Any, minimum: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or value < minimum:
        raise ConfigurationError(f"{name} must be a finite number of seconds >= {minimum:g}, not {value!r}")
    return float(value)


def _check_veto(veto: Any) -> None:
    if not callable(veto):
        raise ConfigurationError(f"commit_veto must be callable(status, headers) -> bool, not {veto!r}")
    try:
        signature = inspect.signature(veto)
    except (TypeError, ValueError):  # some builtins have none: they are asked, and a failure rolls back
        return
    try:
        signature.bind("200 OK", [])
    except TypeError:
        raise ConfigurationError(f"commit_veto {veto!r} cannot be called as veto(status, headers): "
                                 f"its signature is {signature}") from None


@dataclass(frozen=True)
class Settings:
    """Checked options; every field is documented in README.org ("Usage").

    >>> Settings.from_options({"attempts": 3}).attempts
    3
    >>> Settings.from_options({"retry_backoff": float("nan")})
    Traceback (most recent call last):
    ...
    webpy_txscope._errors.ConfigurationError: retry_backoff must be a finite number of seconds >= 0, not nan
    """

    attempts: int = 1
    isolation: str | None = None
    readonly: bool = False
    commit_veto: CommitVeto = default_commit_veto
    retry_backoff: float = 0.02
    retry_after: int = 5
    max_age: float | None = None
    replicas: Any = None
    consistency: str = "session"
    replica_wait: float = 0.5
    max_replica_lag: float | None = None
    #: None, "local", "local:/path", "redis://host:6379/0" or a webpy_txscope.SharedCache.
    cache: Any = None

    def __post_init__(self) -> None:
        attempts = self.attempts
        if not isinstance(attempts, int) or isinstance(attempts, bool) or attempts < 1:
            raise ConfigurationError(f"attempts must be an integer of at least 1, not {attempts!r}")
        _check_veto(self.commit_veto)
        if not isinstance(self.readonly, bool):
            raise ConfigurationError(f"readonly must be True or False, not {self.readonly!r}")
        set_ = object.__setattr__  # frozen: normalized once, here
        set_(self, "isolation", normalize_isolation(self.isolation))
        set_(self, "retry_backoff", _finite("retry_backoff", self.retry_backoff, 0))
        retry_after = self.retry_after
        if isinstance(retry_after, bool) or not isinstance(retry_after, int) or retry_after < 0:
            raise ConfigurationError(f"retry_after must be a whole number of seconds >= 0, not {retry_after!r}")
        if self.max_age is not None:
            set_(self, "max_age", _finite("max_age", self.max_age, 0))
        if self.consistency not in CONSISTENCY:
            raise ConfigurationError(f"unknown consistency {self.consistency!r}: use 'session' (read-your-writes "
                                     "per client, by cookie) or 'strong' (no stale read for anyone)")
        set_(self, "replica_wait", _finite("replica_wait", self.replica_wait, 0))
        if self.max_replica_lag is not None:
            set_(self, "max_replica_lag", _finite("max_replica_lag", self.max_replica_lag, 0))
        if self.cache is not None and not isinstance(self.cache, str) \
                and not hasattr(self.cache, "transaction_class"):
            raise ConfigurationError(f"cache must be 'local', a redis:// URL or a SharedCache, not {self.cache!r}")

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> Settings:
        unknown = sorted(set(options) - set(OPTION_NAMES))
        if unknown:
            raise ConfigurationError(f"unknown option {', '.join(map(repr, unknown))}: "
                                     f"the options are {', '.join(OPTION_NAMES)}")
        return cls(**options)


#: The option names, in the order the docs list them.
OPTION_NAMES: tuple[str, ...] = tuple(f.name for f in fields(Settings))

__all__ = ["ISOLATION_LEVELS", "OPTION_NAMES", "ScopeOptions", "Settings", "UNSET", "Unset",
           "normalize_isolation"]
