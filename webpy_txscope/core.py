"""The lifecycle of a scope, free of any web framework.

A :class:`Scope` is one unit of work on one thread: a lazily begun
:class:`~webpy_txscope._tx.ScopeTransaction` bound to ``hub.threadConnection``.
:class:`ScopeManager` opens scopes, and :meth:`ScopeManager.close` is the one
place where a scope ends: commit or roll back by the rules, run the
after-commit hooks, restore the thread, count it.  The adapters (the web.py
processor, the WSGI middleware, ``transaction()`` for scripts) only decide
*whether* to commit and never re-implement *how*.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import random
import threading
import time
import warnings
import weakref
from typing import Any, Callable, Iterator, Optional

from sqlobject import sqlhub
from sqlobject.dbconnection import DBConnection

from . import _metrics
from ._errors import DISCONNECT, TRANSIENT, ConfigurationError, DatabaseUnavailable, classify
from ._policy import CommitVeto, default_commit_veto, strict_commit_veto
from ._tx import UNTOUCHED, ScopeTransaction
from ._uri import describe, open_connection, scrub

log = logging.getLogger("webpy_txscope")

# ScopeTransaction.__init__ sets the UNTOUCHED attributes and nothing ever
# deletes them, so a transaction is untouched exactly when its __dict__ has
# that many keys (a length is far cheaper to compare than the keys).
_UNTOUCHED_SIZE = len(UNTOUCHED)

ISOLATION_LEVELS = ("READ COMMITTED", "REPEATABLE READ", "SERIALIZABLE")

_MISSING = object()


class _ThreadState(threading.local):
    scope = None  # a default, so that looking it up never raises AttributeError


_local = _ThreadState()


class CommitFailed(Exception):
    """A requested commit did not succeed.

    The transaction was rolled back, except in one case no client can rule
    out: a connection lost while the server was committing, where only the
    reply may have been lost.  Either way the answer must not claim success.
    """


def current_scope() -> Optional["Scope"]:
    """The scope active on this thread, or None."""
    return _local.scope


def _require_scope(what: str) -> "Scope":
    scope = current_scope()
    if scope is None:
        raise RuntimeError(
            "%s needs an active scope: call it inside a request handled by txscope, "
            "or inside a `with scope.transaction():` block" % what
        )
    return scope


def on_commit(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
    """Run ``fn(*args, **kwargs)`` after the current scope commits.

    Never runs after a rollback.  Hooks run in the order registered, after
    the thread's connection was restored (so a hook that touches the database
    runs outside the finished transaction).  An exception in a hook is logged
    and does not change the response or stop the other hooks.
    """
    if not callable(fn):
        raise TypeError("on_commit() needs a callable, not %r" % (fn,))
    _require_scope("on_commit()").hooks.append((fn, args, kwargs))


def doom() -> None:
    """Roll the current scope back at its end, whatever the response says."""
    _require_scope("doom()").doomed = True


def normalize_isolation(level: Optional[str]) -> Optional[str]:
    """Check an isolation level name and return its canonical spelling.

    >>> normalize_isolation("repeatable_read")
    'REPEATABLE READ'
    """
    if level is None:
        return None
    name = " ".join(str(level).replace("_", " ").upper().split())
    if name not in ISOLATION_LEVELS:
        raise ConfigurationError(
            "unknown isolation level %r: use one of %s" % (level, ", ".join(map(repr, ISOLATION_LEVELS)))
        )
    return name


def begin_statements(db_name: str, isolation: Optional[str], readonly: bool):
    """SQL sent first in each transaction, and SQL sent before the connection is pooled again.

    Transaction characteristics are set with ``SET TRANSACTION`` (no
    ``SESSION``), so they last for this transaction only and never leak into
    the next request on the same pooled connection.

    >>> begin_statements("postgres", "SERIALIZABLE", True)
    (('SET TRANSACTION ISOLATION LEVEL SERIALIZABLE, READ ONLY',), ())
    >>> begin_statements("sqlite", "SERIALIZABLE", True)
    (('PRAGMA query_only = ON', 'BEGIN IMMEDIATE'), ('PRAGMA query_only = OFF',))
    """
    if db_name == "sqlite":
        # Python's sqlite3 opens a transaction only before the first write,
        # so reads before it see other commits.  An explicit BEGIN makes the
        # whole request one transaction; IMMEDIATE takes the write lock first,
        # so that read-modify-write requests run one after the other.  Read-only is a
        # per-connection switch that must be turned off again.
        begin, end = (), ()
        if readonly:
            begin, end = ("PRAGMA query_only = ON",), ("PRAGMA query_only = OFF",)
        if isolation == "SERIALIZABLE":
            begin += ("BEGIN IMMEDIATE",)  # writers queue for the lock instead of deadlocking
        elif isolation == "REPEATABLE READ":
            begin += ("BEGIN",)
        return begin, end
    modes = []
    if isolation:
        modes.append("ISOLATION LEVEL " + isolation)
    if readonly:
        modes.append("READ ONLY")
    if not modes:
        return (), ()
    return ("SET TRANSACTION " + ", ".join(modes),), ()


class Scope:
    """One unit of work on one thread.

    Attributes a handler may use through the module functions:
    ``hooks`` (see :func:`on_commit`) and ``doomed`` (see :func:`doom`).
    """

    __slots__ = ("manager", "tx", "hooks", "doomed", "started", "attempt", "_prev", "_outer", "_bound", "_state")

    def __init__(self, manager: "ScopeManager", begin=(), end=(), attempt: int = 1):
        self.manager = manager
        self.tx = ScopeTransaction(manager.connection, begin, end)
        self.hooks: list = []
        self.doomed = False
        self.started = time.monotonic()
        self.attempt = attempt
        self._prev = _MISSING
        self._outer = None
        self._bound = False
        self._state = None  # while bound: this thread's dicts of the hub's and our thread-locals

    def bind(self) -> None:
        """Make this scope's transaction the thread's connection (ScopeManager.open inlines it)."""
        # Work on this thread's dicts of the two thread-locals (each lookup of
        # a thread-local costs as much as a dozen dict operations); .get: a
        # thread without a connection yet costs no exception.
        hub, ours = self.manager.hub.threadingLocal.__dict__, _local.__dict__
        self._state = (hub, ours)
        self._prev = hub.get("connection", _MISSING)
        hub["connection"] = self.tx
        self._outer = ours.get("scope")
        ours["scope"] = self
        self._bound = True

    def unbind(self) -> None:
        """Restore the thread's previous connection exactly (deleted if there was none)."""
        if not self._bound:
            return
        self._bound = False
        hub, ours = self._state
        self._state = None
        if self._prev is _MISSING:
            hub.pop("connection", None)
        else:
            hub["connection"] = self._prev
        self._prev = _MISSING
        ours["scope"] = self._outer
        self._outer = None

    def configure(self, isolation: Optional[str] = _MISSING, readonly: Optional[bool] = _MISSING) -> None:
        """Change the transaction's characteristics before its first statement."""
        if self.tx.began:
            raise RuntimeError(
                "the transaction already sent a statement: isolation and read-only "
                "must be chosen before the handler touches the database"
            )
        settings = self.manager
        level = settings.isolation if isolation is _MISSING else normalize_isolation(isolation)
        ro = settings.readonly if readonly is _MISSING else bool(readonly)
        self.tx._begin, self.tx._end = begin_statements(settings.connection.dbName, level, ro)

    @property
    def failure_kind(self):
        failure = self.tx.failure
        return failure[0] if failure else None

    @property
    def age(self) -> float:
        return time.monotonic() - self.started


class ScopeManager:
    """Opens and closes scopes on one connection with one set of rules.

    This is the framework-free core; :class:`~webpy_txscope.txscope` and
    :class:`~webpy_txscope.TxScopeMiddleware` are adapters around it.
    """

    def __init__(
        self,
        uri_or_connection: "str | DBConnection",
        hub=sqlhub,
        *,
        attempts: int = 1,
        isolation: Optional[str] = None,
        readonly: bool = False,
        commit_veto: CommitVeto = default_commit_veto,
        retry_backoff: float = 0.02,
        retry_after: int = 5,
        max_age: Optional[float] = None,
    ):
        if not isinstance(attempts, int) or isinstance(attempts, bool) or attempts < 1:
            raise ConfigurationError("attempts must be an integer of at least 1, not %r" % (attempts,))
        if not callable(commit_veto):
            raise ConfigurationError("commit_veto must be callable(status, headers) -> bool")
        if retry_backoff < 0:
            raise ConfigurationError("retry_backoff must be >= 0 seconds")
        if not hasattr(hub, "threadingLocal"):
            raise ConfigurationError("hub must be a sqlobject ConnectionHub such as sqlhub")
        self.connection = open_connection(uri_or_connection)
        self.hub = hub
        self.attempts = attempts
        self.isolation = normalize_isolation(isolation)
        self.readonly = bool(readonly)
        self.commit_veto = commit_veto
        self.retry_backoff = retry_backoff
        self.retry_after = int(retry_after)
        self.max_age = max_age
        self._begin, self._end = begin_statements(self.connection.dbName, self.isolation, self.readonly)
        self._available = True
        self._availability = threading.Lock()
        # The package's own vetoes are pure functions of (status, headers), so
        # their answers are kept; a user's veto is asked every time.
        self._verdicts = {} if commit_veto in (default_commit_veto, strict_commit_veto) else None
        _guard_reconnect(self.connection)
        _connections.add(self.connection)

    @property
    def name(self) -> str:
        """The database, for log lines: the URI with its password masked."""
        return describe(self.connection)

    # -- opening -----------------------------------------------------------

    def active(self) -> Optional[Scope]:
        """The scope this manager has open on this thread (to join), or None."""
        scope = current_scope()
        if scope is not None and scope.manager.hub is self.hub and scope._bound \
                and getattr(self.hub.threadingLocal, "connection", None) is scope.tx:
            return scope
        return None

    def open(self, attempt: int = 1) -> Scope:
        """Open a scope and bind it to this thread."""
        ours = _local.__dict__
        scope = ours.pop(self, None)  # this thread's last scope of ours, kept by close() if untouched
        if scope is None:
            scope = Scope(self, self._begin, self._end, attempt)
        else:
            scope.started = time.monotonic()
            scope.attempt = attempt
            scope.tx._obsolete = False
        # Scope.bind() and _metrics.opened(), inline: on the per-request path
        # each function call costs as much as the work it does.
        hub = self.hub.threadingLocal.__dict__
        scope._state = (hub, ours)
        scope._prev = hub.get("connection", _MISSING)
        hub["connection"] = scope.tx
        scope._outer = ours.get("scope")
        ours["scope"] = scope
        scope._bound = True
        _metrics._open[scope] = scope.started
        return scope  # "begin on ..." is logged by the first statement (ScopeTransaction._checkout)

    # -- closing: the one place a scope ends --------------------------------

    def close(self, scope: Scope, commit: bool, reason: str = "") -> None:
        """End *scope*: commit (if *commit* and not doomed) or roll back; restore the thread.

        Raises :class:`CommitFailed` when a requested commit did not happen:
        COMMIT failed, or a statement had already failed with a serialization
        failure, a deadlock or a lost connection (the server rolled back).
        The transaction was rolled back and its connection released first.
        """
        if self.close_untouched(scope):
            return
        if scope.doomed:
            commit, reason = False, "doomed"
        tx = scope.tx
        error = None
        try:
            if tx._raw is None and tx.failure is None:
                tx._finish()  # nothing reached the server: no COMMIT or ROLLBACK to send
            elif commit:
                error = self._commit(tx)
            else:
                tx.rollback()
        finally:
            scope.unbind()
            _metrics.closed(scope)
        if error is not None:
            self._count(scope, "failed", "commit failed: %s" % self._safe(error))
            raise CommitFailed("the commit did not succeed: %s" % self._safe(error)) from error
        if commit:
            self._count(scope, "commit", reason)
            if scope.hooks:
                self._run_hooks(scope)
        else:
            self._count(scope, "rollback", reason or "rolled back")
        if tx._began and scope.failure_kind is not DISCONNECT:
            self.available()  # a stale pooled connection proves nothing about the server

    def close_untouched(self, scope: Scope) -> bool:
        """End *scope* if there is nothing to decide; True if it did, False to use :meth:`close`.

        Most requests of a site never touch the database.  When nothing used
        the scope's transaction (no checkout, statement, cached instance or
        failure: see ``ScopeTransaction.UNTOUCHED``) and the scope carries no
        after-commit hook and no doom, there is nothing to commit, roll back
        or run, so an adapter need not even ask the commit veto: the scope is
        counted as ``untouched``, neither a commit nor a rollback.
        """
        tx = scope.tx
        if scope.hooks or scope.doomed or len(tx.__dict__) != _UNTOUCHED_SIZE:
            return False
        tx._obsolete = True
        state = scope._state
        scope.unbind()
        _metrics.closed(scope)
        _metrics.count("untouched")
        if self.max_age is not None:  # nothing began, so nothing is logged at DEBUG either
            self._report(scope, "untouched", "")
        # Nothing tells this scope from a new one but its id: the thread's
        # next open() reuses it instead of building two objects again, unless
        # it carries its own settings (scope_options) or was not bound here.
        if state is not None and tx._begin is self._begin and tx._end is self._end:
            state[1][self] = scope
        return True

    @staticmethod
    def _commit(tx: ScopeTransaction) -> Optional[BaseException]:
        """Commit *tx*, or roll it back and return why the commit did not happen."""
        failure = tx.failure
        if failure and failure[0] in (TRANSIENT, DISCONNECT):
            tx.rollback()  # the server already rolled back; a handler swallowed the error
            return failure[1] or DatabaseUnavailable("no live connection to the database")
        try:
            tx.commit(close=True)
        except Exception as e:
            tx.rollback()
            return e
        return None

    def _count(self, scope: Scope, outcome: str, reason: str) -> None:
        _metrics.count(outcome)
        self._report(scope, outcome, reason)

    def _report(self, scope: Scope, outcome: str, reason: str) -> None:
        if self.max_age is not None and scope.age > self.max_age:
            log.warning("scope on %s was open %.1fs, longer than the limit of %.1fs",
                        self.name, scope.age, self.max_age)
        if outcome == "failed":
            log.error("%s on %s after %.1f ms", reason, self.name, scope.age * 1000)
        elif log.isEnabledFor(logging.DEBUG):
            log.debug("%s on %s%s (%.1f ms, began=%s)", outcome, self.name,
                      ": " + reason if reason else "", scope.age * 1000, scope.tx.began)

    def _run_hooks(self, scope: Scope) -> None:
        for fn, args, kwargs in scope.hooks:
            try:
                fn(*args, **kwargs)
            except Exception:
                log.exception("after-commit hook %r failed; the transaction stays committed", fn)
        scope.hooks = []

    def _safe(self, error: BaseException) -> str:
        return scrub("%s: %s" % (type(error).__name__, error), self.connection)

    def verdict(self, status, headers) -> bool:
        """True to commit a unit of work that ended with *status* and *headers*.

        A commit veto that raises counts as a veto: rolling back loses nothing
        that was acknowledged.
        """
        verdicts = self._verdicts
        key = None
        if verdicts is not None:
            try:
                key = (status, tuple(headers) if headers else ())
                known = verdicts.get(key)
            except TypeError:  # something unhashable in the headers
                key = known = None
            if known is not None:
                return known
        try:
            answer = not self.commit_veto(status, headers)
        except Exception:
            log.exception("commit veto %r raised; rolling back", self.commit_veto)
            return False
        if key is not None:
            if len(verdicts) >= 512:  # unique headers (cookies, ETags) must not grow it forever
                verdicts.clear()
            verdicts[key] = answer
        return answer

    # -- retries -------------------------------------------------------------

    def should_retry(self, scope: Scope, error: Optional[BaseException] = None) -> bool:
        """True when the unit of work failed transiently and may run again."""
        if scope.attempt >= self.attempts:
            return False
        kind = scope.failure_kind
        if kind is None and error is not None:
            kind = classify(error)
        return kind is TRANSIENT

    def backoff(self, scope: Scope) -> None:
        """Log the retry and sleep a small randomized, growing delay."""
        _metrics.count("retry")
        failure = scope.tx.failure
        log.warning("retrying (attempt %d of %d) after a transient error on %s: %s",
                    scope.attempt + 1, self.attempts, self.name,
                    self._safe(failure[1]) if failure and failure[1] else "commit failed")
        if self.retry_backoff:
            time.sleep(random.uniform(0, self.retry_backoff * (2 ** (scope.attempt - 1))))

    # -- availability ---------------------------------------------------------

    def unavailable(self, error: BaseException) -> None:
        """Note that the database is unreachable; log one line per outage."""
        with self._availability:  # threads failing at once must log once
            was_available, self._available = self._available, False
        if was_available:
            log.error("database %s is unreachable, answering 503 until it is back: %s",
                      self.name, self._safe(error))

    def available(self) -> None:
        if self._available:
            return  # the common case: no lock on every request
        with self._availability:
            was_available, self._available = self._available, True
        if not was_available:
            log.warning("database %s is reachable again", self.name)

    # -- scripts -------------------------------------------------------------

    @contextlib.contextmanager
    def transaction(self, isolation: Optional[str] = _MISSING, readonly: Optional[bool] = _MISSING) -> Iterator[Scope]:
        """A scope for a script or a cron job: commit on success, roll back on any exception.

        Joins the scope already open on this thread, if any.
        """
        joined = self.active()
        if joined is not None:
            yield joined
            return
        scope = self.open()
        try:
            if isolation is not _MISSING or readonly is not _MISSING:
                scope.configure(isolation, readonly)
            yield scope
        except BaseException as e:
            self.close(scope, False, "%s raised" % type(e).__name__)
            raise
        self.close(scope, True)

    def run(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Call ``fn(*args, **kwargs)`` in a scope, retrying transient failures."""
        for attempt in itertools.count(1):
            if self.active() is not None:
                return fn(*args, **kwargs)
            scope = self.open(attempt)
            try:
                result = fn(*args, **kwargs)
            except BaseException as e:
                self.close(scope, False, "%s raised" % type(e).__name__)
                if isinstance(e, Exception) and self.should_retry(scope, e):
                    self.backoff(scope)
                    continue
                raise
            try:
                self.close(scope, True)
            except CommitFailed as e:
                if self.should_retry(scope, e.__cause__):
                    self.backoff(scope)
                    continue
                raise
            return result

    def bind_process(self) -> None:
        """Bind the connection process-wide (``hub.processConnection``) for a REPL or a script."""
        self.hub.processConnection = self.connection


#: Every connection a scope uses in this process, to be detached after a fork.
_connections: "weakref.WeakSet[DBConnection]" = weakref.WeakSet()
#: Driver connections inherited from the parent process: never used, never
#: closed (closing would end the parent's sessions), only kept alive.
_inherited: list = []


def _detach_after_fork() -> None:
    """Give a forked child (gunicorn --preload, multiprocessing) its own connections.

    The pooled driver connections share their sockets with the parent; using
    them from two processes corrupts both sessions.
    """
    for connection in list(_connections):
        pool = getattr(connection, "_pool", None)
        if pool:
            _inherited.extend(pool)
            pool[:] = []
        thread_pool = getattr(connection, "_threadPool", None)  # SQLite
        if thread_pool:
            _inherited.extend(thread_pool.values())
            thread_pool.clear()
            connection._threadOrigination.clear()


os.register_at_fork(after_in_child=_detach_after_fork)


def _guard_reconnect(connection: DBConnection) -> None:
    """Stop MySQL drivers from reconnecting a connection inside a transaction.

    SQLObject asks both MySQL drivers to reconnect silently; after a lost
    connection the rest of a transaction would then run in autocommit on a new
    session, committing half of it.  A dead connection must fail loudly: the
    scope discards it and the next transaction gets a fresh one.
    """
    if connection.dbName != "mysql" or getattr(connection, "_txscope_guarded", False):
        return
    make = connection.makeConnection

    def make_connection():
        raw = make()
        if connection.driver == "mysqldb":
            with warnings.catch_warnings():
                # Deprecated, but still the only switch for the flag SQLObject set.
                warnings.simplefilter("ignore", DeprecationWarning)
                raw.ping(False)  # clears libmysqlclient's persistent reconnect flag
        return raw

    reconnect = connection._force_reconnect

    def force_reconnect(raw):
        if not raw.get_autocommit():
            raise connection.module.OperationalError(
                2013, "Lost connection to server inside a transaction; not reconnecting")
        reconnect(raw)

    connection.makeConnection = make_connection
    connection._force_reconnect = force_reconnect
    connection._txscope_guarded = True


__all__ = [
    "CommitFailed",
    "DatabaseUnavailable",
    "Scope",
    "ScopeManager",
    "current_scope",
    "doom",
    "on_commit",
]


# -- the answer when the database, not the application, failed ------------------


def unavailable_answer(scope: Scope) -> tuple[str, list[tuple[str, str]], str]:
    """Note that *scope*'s database is unreachable; return the 503 every adapter sends.

    ``(status, headers, body)``: ``Retry-After`` tells clients and load
    balancers when to ask again, instead of a 500 that looks like a bug.
    """
    manager = scope.manager
    failure = scope.tx.failure
    manager.unavailable(failure[1] if failure and failure[1] else DatabaseUnavailable("no live connection"))
    headers = [("Content-Type", "text/plain; charset=utf-8"), ("Retry-After", str(manager.retry_after))]
    return "503 Service Unavailable", headers, "The database is unavailable; please try again shortly.\n"
