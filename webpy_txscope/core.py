"""The lifecycle of a scope, free of any web framework.

A :class:`Scope` is one unit of work on one thread: a lazily begun
:class:`~webpy_txscope._tx.ScopeTransaction` bound to ``hub.threadConnection``.
:class:`ScopeManager` opens scopes, and :meth:`ScopeManager.finish` is the one
place where a unit of work ends: it decides (retry, commit, roll back), does
it, runs the after-commit hooks, restores the thread, counts it, and returns
an :class:`Outcome`.  The adapters (the web.py processor, the WSGI middleware,
``transaction()`` and ``run()`` for scripts) only translate their framework's
result into that call and the outcome back into an answer.
"""

from __future__ import annotations

import contextlib
import enum
import itertools
import logging
import random
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Iterator, TypeVar

from sqlobject import sqlhub
from sqlobject.dbconnection import DBConnection

from . import _driver, _metrics
from ._errors import (DISCONNECT, TRANSIENT, CommittedUnconfirmed, ConfigurationError, DatabaseUnavailable, ErrorKind,
                      ServiceUnavailable, classify)
from ._options import UNSET, Settings, Unset, normalize_isolation
from ._policy import Headers, Status, default_commit_veto, strict_commit_veto
from ._tx import UNTOUCHED_SIZE, Failure, ScopeTransaction
from ._uri import describe, open_connection, scrub

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from ._options import ScopeOptions
    from .replicas import ReplicaRouter, Request, Route

log = logging.getLogger("webpy_txscope")

T = TypeVar("T")

_MISSING: Any = object()  # "no key" in the thread-local dicts, never a user-visible default


class _ThreadState(threading.local):
    scope: Scope | None = None  # a default, so that looking it up never raises AttributeError
    committed: Scope | None = None  # the scope whose after-commit hooks are running


_local = _ThreadState()


class Outcome(enum.Enum):
    """How a unit of work ended: what :meth:`ScopeManager.finish` decided and did."""

    #: Nothing reached the database: nothing was committed or rolled back.
    UNTOUCHED = "untouched"
    COMMITTED = "committed"
    ROLLED_BACK = "rolled back"
    #: Rolled back after a serialization failure or deadlock: run the unit of work again.
    RETRY = "retry"
    #: Rolled back because the database could not be reached (the adapters answer 503).
    UNAVAILABLE = "unavailable"
    #: A commit was due and did not happen (the adapters answer 500, never the success).
    COMMIT_FAILED = "commit failed"

    @property
    def failed(self) -> bool:
        """True when the answer must not be the application's: 500 or 503."""
        return self is Outcome.COMMIT_FAILED or self is Outcome.UNAVAILABLE


UNTOUCHED, COMMITTED, ROLLED_BACK, RETRY, UNAVAILABLE, COMMIT_FAILED = Outcome


class CommitFailed(Exception):
    """A requested commit did not succeed.

    The transaction was rolled back, except in one case no client can rule
    out: a connection lost while the server was committing, where only the
    reply may have been lost.  Either way the answer must not claim success.
    """


def current_scope() -> Scope | None:
    """The scope active on this thread, or None."""
    return _local.scope


def _require_scope(what: str) -> Scope:
    scope = current_scope()
    if scope is None:
        raise RuntimeError(
            f"{what} needs an active scope: call it inside a request handled by txscope, "
            "or inside a `with scope.transaction():` block"
        )
    return scope


def on_commit(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
    """Run ``fn(*args, **kwargs)`` after the current scope commits.

    Never runs after a rollback, nor after an attempt that is retried.  Hooks
    run in the order registered, after the thread's connection was restored
    (so a hook that touches the database runs outside the finished
    transaction).  A hook registered by a running hook runs after the hooks
    already registered.  An exception in a hook is logged and changes neither
    the response nor the other hooks.
    """
    if not callable(fn):
        raise TypeError(f"on_commit() needs a callable, not {fn!r}")
    scope = _local.scope or _local.committed
    if scope is None:
        _require_scope("on_commit()")
    assert scope is not None
    scope.hooks.append((fn, args, kwargs))


def doom() -> None:
    """Roll the current scope back at its end, whatever the response says."""
    _require_scope("doom()").doomed = True


class Scope:
    """One unit of work on one thread.

    Attributes a handler may use through the module functions:
    ``hooks`` (see :func:`on_commit`) and ``doomed`` (see :func:`doom`).
    ``problem`` says why the last :meth:`ScopeManager.finish` did not commit.
    With ``replicas=``, ``route`` says where the scope runs (a
    :class:`~webpy_txscope.replicas.Route`, or a ``Request`` that its
    transaction routes at its first statement) and ``position`` is the
    client's new position cookie after it finished.
    """

    __slots__ = ("manager", "tx", "hooks", "doomed", "started", "attempt", "isolation", "readonly",
                 "problem", "kept", "service_down", "unscoped_body", "route", "position", "_prev", "_outer",
                 "_bound", "_state")

    def __init__(self, manager: ScopeManager, attempt: int = 1, route: Route | Request | None = None):
        self.manager = manager
        self.route = route
        self.position: str | None = None
        if route is not None and route.pending:
            router: Any = manager.router
            self.tx = router.transaction(route, manager._begin, manager._end, manager._replica_begin)
        else:
            self.tx = manager.transaction_class(manager.connection, manager._begin, manager._end)
        self.hooks: list[tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]] = []
        self.doomed = False
        self.started = time.monotonic()
        self.attempt = attempt
        self.isolation = manager.isolation
        self.readonly = manager.readonly
        self.problem: str | None = None
        self.kept = False  # the last finish committed, though it failed after COMMIT (CommittedUnconfirmed)
        self.service_down = False  # the last finish did not commit: a service besides the database was down
        self.unscoped_body = False  # set by @no_scope when its handler returned a generator
        self._prev: Any = _MISSING
        self._outer: Scope | None = None
        self._bound = False
        # While bound: this thread's dicts of the hub's and our thread-locals.
        self._state: tuple[dict[str, Any], dict[Any, Any]] | None = None

    def bind(self) -> None:
        """Make this scope's transaction the thread's connection."""
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
        state = self._state
        assert state is not None
        hub, ours = state
        self._state = None
        if self._prev is _MISSING:
            hub.pop("connection", None)
        else:
            hub["connection"] = self._prev
        self._prev = _MISSING
        ours["scope"] = self._outer
        self._outer = None

    @property
    def bound(self) -> bool:
        return self._bound

    def configure(self, isolation: str | None | Unset = UNSET, readonly: bool | Unset = UNSET,
                  replica: bool | Unset = UNSET) -> None:
        """Change the transaction's characteristics before its first statement.

        *replica* False keeps a safe-method scope off the replicas (``replicas=``).
        """
        if self.tx.began:
            raise RuntimeError(
                "the transaction already sent a statement: isolation, read-only and replica "
                "must be chosen before the handler touches the database"
            )
        if isolation is not UNSET:
            self.isolation = normalize_isolation(isolation)
        if readonly is not UNSET:
            self.readonly = bool(readonly)
        db_name = self.manager.connection.dbName
        self.tx.set_statements(*_driver.begin_statements(db_name, self.isolation, self.readonly))
        route = self.route
        if route is not None and route.pending:  # a replica only ever reads
            self.tx.prefer(_driver.begin_statements(db_name, self.isolation, True)[0],
                           None if replica is UNSET else bool(replica))

    def check_joinable(self, isolation: str | None | Unset, readonly: bool | Unset) -> None:
        """Refuse a nested block whose characteristics this transaction does not have.

        A transaction's isolation and read-only mode are fixed when it begins;
        a block that asked for others and silently ran without them (a
        "read-only" block that writes) would be worse than an error.
        """
        if isolation is not UNSET and normalize_isolation(isolation) != self.isolation:
            raise RuntimeError(
                f"a nested block asked for isolation {isolation!r}, but it joins a transaction with "
                f"{self.isolation or 'the server default'}: choose it for the whole request "
                "(@scope_options) or run the block outside the request")
        if readonly is not UNSET and bool(readonly) != self.readonly:
            raise RuntimeError(
                f"a nested block asked for readonly={bool(readonly)}, but it joins a "
                f"{'read-only' if self.readonly else 'read-write'} transaction: choose it for the "
                "whole request (@scope_options) or run the block outside the request")

    @property
    def failure_kind(self) -> ErrorKind | None:
        failure = self.tx.failure
        return failure.kind if failure else None

    @property
    def age(self) -> float:
        return time.monotonic() - self.started


class ScopeManager:
    """Opens scopes on one connection and ends them by one set of rules.

    This is the framework-free core; :class:`~webpy_txscope.txscope` and
    :class:`~webpy_txscope.TxScopeMiddleware` are adapters around it.  The
    options are those of ``txscope`` (see :class:`~webpy_txscope._options.ScopeOptions`).
    """

    def __init__(self, uri_or_connection: str | DBConnection, hub: Any = sqlhub,
                 **options: Unpack[ScopeOptions]):
        settings = Settings.from_options(options)
        if not hasattr(hub, "threadingLocal"):
            raise ConfigurationError("hub must be a sqlobject ConnectionHub such as sqlhub")
        self.settings = settings
        if settings.replicas:
            from .replicas import check_kinds  # before connecting: a wrong driver must not mask the real problem

            check_kinds(uri_or_connection, settings.replicas)
        self.connection: DBConnection = open_connection(uri_or_connection)
        self.hub = hub
        # Copied from the settings: read on every request.
        self.attempts = settings.attempts
        self.isolation = settings.isolation
        self.readonly = settings.readonly
        self.commit_veto = settings.commit_veto
        self.retry_backoff = settings.retry_backoff
        self.retry_after = settings.retry_after
        self.max_age = settings.max_age
        self._begin, self._end = _driver.begin_statements(self.connection.dbName, self.isolation, self.readonly)
        self._available = True
        self._availability = threading.Lock()
        # The package's own vetoes are pure functions of (status, headers), so
        # their answers are kept; a user's veto is asked every time.
        self._verdicts: dict[Any, bool] | None = \
            {} if self.commit_veto in (default_commit_veto, strict_commit_veto) else None
        _driver.prepare(self.connection)
        #: What each scope's transaction is: a cached one only if a cache is configured.
        self.transaction_class: type[ScopeTransaction] = ScopeTransaction
        self.cache = None
        if settings.cache is not None:
            from .sharedcache import attach  # only apps that use the cache load it

            self.cache = attach(settings.cache, self.connection)
            self.transaction_class = self.cache.transaction_class
        self.router: ReplicaRouter | None = None
        if settings.replicas:
            from . import replicas  # loaded only by the apps that use it

            self.router = replicas.ReplicaRouter(
                self.connection, settings.replicas, consistency=settings.consistency,
                replica_wait=settings.replica_wait, max_replica_lag=settings.max_replica_lag,
                transaction_class=self.transaction_class)
            self._replica_begin = _driver.begin_statements(self.connection.dbName, self.isolation, True)[0]
            for replica in self.router.replicas:
                _driver.prepare(replica.connection)
            # Only a manager with replicas pays for them: its finish step is
            # the routed one, every other manager's stays as it is.
            self.finish = self._finish_routed  # type: ignore[method-assign]

    @property
    def name(self) -> str:
        """The database, for log lines: the URI with its password masked."""
        return describe(self.connection)

    def __repr__(self) -> str:
        return f"<ScopeManager {self.name}>"

    # -- opening -----------------------------------------------------------

    def active(self) -> Scope | None:
        """The scope open on this thread for this manager's hub (to join), or None."""
        scope = _local.scope
        if scope is not None and scope.manager.hub is self.hub and scope._bound \
                and getattr(self.hub.threadingLocal, "connection", None) is scope.tx:
            return scope
        return None

    def open(self, attempt: int = 1, route: Route | Request | None = None) -> Scope:
        """Open a scope and bind it to this thread; *route* (``replicas=``) says on which server."""
        ours: dict[Any, Any] = _local.__dict__
        # This thread's last scope of ours, kept by finish() if untouched.
        scope = ours.pop(self, None) if route is None else None
        if scope is None:
            scope = Scope(self, attempt, route)
        else:
            scope.started = time.monotonic()
            scope.attempt = attempt
            scope.unscoped_body = False
            scope.tx._obsolete = False  # an untouched transaction has no other state to reset
        # Scope.bind(), inline: on the per-request path each function call
        # costs as much as the work it does.
        hub = self.hub.threadingLocal.__dict__
        scope._state = (hub, ours)
        scope._prev = hub.get("connection", _MISSING)
        hub["connection"] = scope.tx
        scope._outer = ours.get("scope")
        ours["scope"] = scope
        scope._bound = True
        _metrics._open[scope] = scope.started
        return scope  # "begin on ..." is logged by the first statement (ScopeTransaction._checkout)

    # -- finishing: the one place a unit of work ends -------------------------

    def finish(self, scope: Scope, status: Status | Unset = UNSET, headers: Headers = None,
               error: BaseException | None = None, *, retry: bool = True) -> Outcome:
        """End *scope* by the rules and say how it ended.

        *status* and *headers* are the answer the work gave (judged by the
        commit veto); without them (a script) the work commits unless it
        failed.  *error* is an exception that escaped the work: it always
        rolls back, whatever a header says.  *retry* is False when the work
        cannot run again (a body already streaming, a script's ``with``).

        The rules, in order: nothing touched the database: ``UNTOUCHED``.  A
        serialization failure or deadlock with attempts left: roll back,
        back off, ``RETRY`` (hooks of the attempt never run).  An error, a
        doom or a veto: roll back (``UNAVAILABLE`` if the database was
        unreachable).  Otherwise commit: ``COMMITTED`` and run the hooks, or
        ``RETRY`` / ``UNAVAILABLE`` / ``COMMIT_FAILED`` if COMMIT did not
        happen.  The thread's connection is restored on every path.
        """
        if self.end_if_untouched(scope):
            return UNTOUCHED
        scope.problem = None
        scope.kept = scope.service_down = False
        kind = self._failure_kind(scope, error)
        if kind is TRANSIENT and retry and scope.attempt < self.attempts:
            self._roll_back(scope, "transient error")
            return self._retry(scope)
        if error is not None:
            commit, reason = False, f"{type(error).__name__} raised"
            if status is not UNSET:
                reason = f"status {status}, {reason}"
        elif scope.doomed:
            commit, reason = False, "doomed"
        elif status is UNSET:
            commit, reason = True, ""
        else:
            verdict = self.verdict(status, headers)
            if verdict is None:  # the veto itself failed: nothing can be promised
                self._roll_back(scope, "the commit veto raised")
                scope.problem = "the commit veto raised; the changes were rolled back"
                _metrics.count("failed")
                return COMMIT_FAILED
            commit, reason = verdict, f"status {status}"
        if not commit:
            self._roll_back(scope, reason)
            if kind is DISCONNECT:
                return self._unavailable(scope)
            return ROLLED_BACK
        failure = self._commit(scope)
        if failure is None:
            self._count(scope, "commit", reason)
            if scope.hooks:
                self._run_hooks(scope)
            return COMMITTED
        scope.problem = failure.summary
        if failure.kind is TRANSIENT and retry and scope.attempt < self.attempts:
            return self._retry(scope)
        self._count(scope, "failed", f"commit failed: {failure.summary}")
        if failure.kind is DISCONNECT:
            return self._unavailable(scope)
        if scope.service_down:
            return UNAVAILABLE  # 503, but the database is not down: nothing to note for it
        return COMMIT_FAILED

    def _finish_routed(self, scope: Scope, status: Status | Unset = UNSET, headers: Headers = None,
                       error: BaseException | None = None, *, retry: bool = True) -> Outcome:
        """:meth:`finish` with ``replicas=``: a read that failed on a replica runs again on the
        primary; the client's position is read after the scope ended (see webpy_txscope/replicas.py)."""
        router = self.router
        assert router is not None
        route: Any = scope.route
        tx: Any = scope.tx
        # With cache=, entries served to the scope show the primary's present.
        served = self.cache is not None and tx.cache_served
        if route is not None and route.pending:
            request, route = route, tx.route  # None: it never reached a server
            if route is None and served:  # served entirely by the cache: the client saw the primary's present
                route = router.primary_route(request)
        if route is None:  # nothing routed, or a script's scope: no client to give a position
            return ScopeManager.finish(self, scope, status, headers, error, retry=retry)
        if route.replica is not None and retry and router.rerun_on_primary(route, tx, error):
            self._roll_back(scope, "a write or a lost connection on a replica: again on the primary")
            scope.route = router.primary_route(route)
            return RETRY
        outcome = ScopeManager.finish(self, scope, status, headers, error, retry=retry)
        if outcome.failed and route.replica is not None and retry and router.rerun_after_failed_commit(route):
            # COMMIT of a read on a replica that went away: a replica never
            # keeps a write, so nothing happened that running again could repeat.
            scope.route = router.primary_route(route)
            return RETRY
        if outcome is COMMITTED or outcome is ROLLED_BACK:
            scope.position = router.position_after(route, tx.began, served, tx)
        return outcome

    @staticmethod
    def _failure_kind(scope: Scope, error: BaseException | None) -> ErrorKind | None:
        failure = scope.tx.failure
        if failure is not None:
            return failure.kind
        if error is not None and isinstance(error, Exception):
            kind = classify(error)
            if kind is not ErrorKind.OTHER:
                return kind
        return None

    def end_if_untouched(self, scope: Scope) -> bool:
        """End *scope* if it never used its transaction: nothing to commit, roll back or run.

        True if it did (:meth:`finish` would say ``UNTOUCHED``).  Most
        requests of a site never touch the database, so an adapter may ask
        this first and skip even reading its framework's status and headers
        for the commit veto: the scope is counted as ``untouched``,
        neither a commit nor a rollback, and the thread's next :meth:`open`
        reuses it (nothing tells it from a new one but its id), unless it
        carries its own settings (scope_options) or was not bound here.
        """
        tx = scope.tx
        # ScopeTransaction.touched, inline: this runs for every request, and
        # method calls here cost an eighth of what the package adds to a
        # request that never touches the database (callgrind, bench/NOTES.md).
        if scope.hooks or scope.doomed or len(tx.__dict__) != UNTOUCHED_SIZE:
            return False
        tx._obsolete = True
        state = scope._state
        scope.unbind()
        _metrics.closed(scope)
        _metrics.count("untouched")
        if self.max_age is not None:  # nothing began, so nothing is logged at DEBUG either
            self._report(scope, "untouched", "")
        if state is not None and scope.route is None and tx._begin is self._begin and tx._end is self._end:
            state[1][self] = scope
        return True

    def _roll_back(self, scope: Scope, reason: str) -> None:
        """Roll back (nothing to send if nothing began) and restore the thread."""
        tx = scope.tx
        try:
            if not tx.holds_connection and tx.failure is None:
                tx._finish()  # nothing reached the server: no COMMIT or ROLLBACK to send
            else:
                tx.rollback()
        finally:
            scope.unbind()
            _metrics.closed(scope)
        self._count(scope, "rollback", reason)
        if tx.began and scope.failure_kind is not DISCONNECT:
            self.available()  # a stale pooled connection proves nothing about the server

    def _commit(self, scope: Scope) -> Failure | None:
        """Commit and restore the thread; or roll back and return why the commit did not happen."""
        tx = scope.tx
        failure = tx.failure
        try:
            if failure is not None and failure.kind is not ErrorKind.OTHER:
                tx.rollback()  # the server already rolled back; a handler swallowed the error
                return failure
            if not tx.holds_connection:
                tx._finish()
                return None
            try:
                tx.commit(close=True)
            except Exception as e:
                tx.rollback()
                kind = tx.failure.kind if tx.failure is not None else classify(e)
                if isinstance(e, ServiceUnavailable):  # nothing was sent to COMMIT: as transient
                    kind, scope.service_down = TRANSIENT, True
                scope.kept = isinstance(e, CommittedUnconfirmed)
                return Failure(kind, self._safe(e))
        finally:
            scope.unbind()
            _metrics.closed(scope)
        if tx.began:
            self.available()
        return None

    def _retry(self, scope: Scope) -> Outcome:
        """Log the retry and sleep a small randomized, growing delay."""
        _metrics.count("retry")
        failure = scope.tx.failure
        log.warning("retrying (attempt %d of %d) after a transient error on %s: %s",
                    scope.attempt + 1, self.attempts, self.name,
                    failure.summary if failure else scope.problem or "commit failed")
        if self.retry_backoff:
            time.sleep(random.uniform(0, self.retry_backoff * (2 ** (scope.attempt - 1))))
        return RETRY

    def _unavailable(self, scope: Scope) -> Outcome:
        failure = scope.tx.failure
        scope.problem = failure.summary if failure else f"no live connection to {self.name}"
        self.unavailable(scope.problem)
        return UNAVAILABLE

    def unavailable(self, reason: BaseException | str) -> None:
        """Note that the database is unreachable; log one line per outage."""
        with self._availability:  # threads failing at once must log once
            was_available, self._available = self._available, False
        if was_available:
            summary = reason if isinstance(reason, str) else self._safe(reason)
            log.error("database %s is unreachable, answering 503 until it is back: %s", self.name, summary)

    def available(self) -> None:
        """Note that the database answered; log once when it is back after an outage."""
        if self._available:
            return  # the common case: no lock on every request
        with self._availability:
            was_available, self._available = self._available, True
        if not was_available:
            log.warning("database %s is reachable again", self.name)

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
        previous, _local.committed = _local.committed, scope
        try:
            hooks = scope.hooks
            for fn, args, kwargs in hooks:  # a hook may append to the list: it runs too
                try:
                    fn(*args, **kwargs)
                except Exception:
                    log.exception("after-commit hook %r failed; the transaction stays committed", fn)
        finally:
            _local.committed = previous
            scope.hooks = []

    def _safe(self, error: BaseException) -> str:
        return scrub(f"{type(error).__name__}: {error}", self.connection)

    def verdict(self, status: Status, headers: Headers) -> bool | None:
        """True to commit a unit of work that ended with *status* and *headers*, False to roll back.

        None when the commit veto raised: the work rolls back, and its answer
        must not claim success.
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
            return None
        if key is not None:
            assert verdicts is not None
            if len(verdicts) >= 512:  # unique headers (cookies, ETags) must not grow it forever
                verdicts.clear()
            verdicts[key] = answer
        return answer

    # -- scripts -------------------------------------------------------------

    @contextlib.contextmanager
    def transaction(self, isolation: str | None | Unset = UNSET,
                    readonly: bool | Unset = UNSET) -> Iterator[Scope]:
        """A scope for a script or a cron job: commit on success, roll back on any exception.

        Inside a scope already open on this thread (a request), the block is a
        savepoint of that scope's transaction: an exception that leaves the
        block undoes the block's writes, even if the caller catches it; its
        writes otherwise commit or roll back with the enclosing scope.

        Raises :class:`CommitFailed` when the commit at the end did not happen.
        """
        joined = self.active()
        if joined is not None:
            with _nested(joined, isolation, readonly):
                yield joined
            return
        scope = self.open()
        try:
            if isolation is not UNSET or readonly is not UNSET:
                scope.configure(isolation, readonly)
            yield scope
        except BaseException as e:
            self.finish(scope, error=e, retry=False)
            raise
        _raise_if_failed(scope, self.finish(scope, retry=False))

    def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Call ``fn(*args, **kwargs)`` in a scope, retrying transient failures.

        Inside a scope already open on this thread it runs as a nested block
        (see :meth:`transaction`), without retries of its own.
        """
        joined = self.active()
        if joined is not None:
            with _nested(joined, UNSET, UNSET):
                return fn(*args, **kwargs)
        for attempt in itertools.count(1):
            scope = self.open(attempt)
            try:
                result = fn(*args, **kwargs)
            except BaseException as e:
                if self.finish(scope, error=e, retry=isinstance(e, Exception)) is RETRY:
                    continue
                raise
            outcome = self.finish(scope)
            if outcome is RETRY:
                continue
            _raise_if_failed(scope, outcome)
            return result
        raise AssertionError("unreachable")

    def bind_process(self) -> None:
        """Bind the connection process-wide (``hub.processConnection``) for a REPL or a script."""
        self.hub.processConnection = self.connection


@contextlib.contextmanager
def _nested(scope: Scope, isolation: str | None | Unset, readonly: bool | Unset) -> Iterator[None]:
    scope.check_joinable(isolation, readonly)
    tx = scope.tx
    point = tx.savepoint()
    try:
        yield
    except BaseException:
        tx.rollback_to(point)
        raise
    tx.release(point)


def _raise_if_failed(scope: Scope, outcome: Outcome) -> None:
    if outcome.failed:
        error = DatabaseUnavailable if outcome is UNAVAILABLE else None
        message = f"the commit did not succeed: {scope.problem}"
        if error is not None:
            raise CommitFailed(message) from error(scope.problem or "the database is unreachable")
        raise CommitFailed(message)


# -- streaming bodies -----------------------------------------------------------------


class ScopedBody:
    """A streaming response body that runs inside its scope and ends it.

    The status line went out with the first chunk, so the rules are: commit
    when the body is exhausted (and the commit veto agrees with the answer),
    roll back when it raises or is closed early.  Once the transaction holds
    a connection, the last chunk is held back until COMMIT succeeded: if it
    fails, the body ends with an error instead, so the server aborts the
    response and the client sees it incomplete (a chunked body without its
    end, or fewer bytes than its Content-Length).  The body's own ``close()``
    (a generator's ``finally``) runs inside the scope, before it ends.
    """

    def __init__(self, scope: Scope, chunks: Iterator[Any], close: Callable[[], Any] | None = None):
        self._scope: Scope | None = scope
        self._chunks = chunks
        self._close = close
        self._held: Any = None
        self.delivered = False  # True once a chunk went to the server
        scope.unbind()

    def __iter__(self) -> ScopedBody:
        return self

    def answer(self) -> tuple[Status, Headers]:
        """The status and headers the body's commit veto judges (given by the adapter)."""
        raise NotImplementedError

    def answered(self, error: BaseException) -> bool:
        """True if *error* is an answer rather than a failure (web.py's redirects before the first chunk)."""
        return False

    def failed(self, outcome: Outcome, scope: Scope) -> BaseException:
        """The exception that tells the server its response failed."""
        return CommitFailed(f"the commit did not succeed: {scope.problem}")

    def __next__(self) -> Any:
        scope = self._scope
        if scope is None:
            raise StopIteration
        scope.bind()
        try:
            while True:
                try:
                    chunk = next(self._chunks)
                except StopIteration:
                    outcome = self._end(scope, *self.answer())
                    if outcome.failed:
                        raise self.failed(outcome, scope) from None
                    held, self._held = self._held, None
                    if held is None:
                        raise
                    return held
                if self._held is not None:
                    chunk, self._held = self._held, chunk
                elif chunk and scope.tx.holds_connection:
                    self._held = chunk  # not the last one until the next is known
                    continue
                self.delivered = True
                return chunk
        except BaseException as e:
            if self._scope is not None:  # the body raised (not our own StopIteration or failure)
                if not self.delivered and self.answered(e):
                    outcome = self._end(scope, *self.answer())
                    if outcome.failed:
                        raise self.failed(outcome, scope) from None
                else:
                    self._end(scope, error=e)
            raise
        finally:
            scope.unbind()

    def _end(self, scope: Scope, status: Status | Unset = UNSET, headers: Headers = None,
             error: BaseException | None = None) -> Outcome:
        """Close the body inside the scope, then finish the scope."""
        self._scope = None
        self._held = None if error is not None else self._held
        if not scope.bound:
            scope.bind()  # the body's close() (a generator's finally) may still use the database
        close_error = None
        if self._close is not None:
            try:
                self._close()
            except BaseException as e:
                close_error = e
        outcome = scope.manager.finish(scope, status, headers, error or close_error, retry=False)
        if close_error is not None and error is None:
            raise close_error
        return outcome

    def close(self) -> None:
        """The server is done: a body not exhausted was cut short (the client left)."""
        scope = self._scope
        if scope is not None:
            self._end(scope, error=_ClientGone("the response was closed before its end"))

    def __del__(self) -> None:
        if self._scope is not None:
            self.close()


class _ClientGone(Exception):
    """Why a body closed before its end rolls back."""


# -- fork safety ---------------------------------------------------------------------


def _drop_inherited_scopes() -> None:
    """In a forked child, forget the scopes the forking thread had bound.

    Their transactions run on the parent's connections, inside the parent's
    transaction: the child must neither use nor end them (a ROLLBACK would
    end the parent's).  The thread gets back the connection it had before
    them, so that code in the child opens scopes of its own.
    """
    scope = _local.scope
    while scope is not None:
        outer = scope._outer
        tx = scope.tx
        if tx._raw is not None:
            _driver.inherit(tx._raw)
            tx._raw = None
        tx._obsolete = True
        scope.hooks = []
        _metrics.closed(scope)
        scope.unbind()
        scope = outer
    _local.__dict__.clear()


_driver.after_fork_hooks.append(_drop_inherited_scopes)


__all__ = ["COMMITTED", "COMMIT_FAILED", "CommitFailed", "Outcome", "ROLLED_BACK", "RETRY", "Scope",
           "ScopeManager", "ScopedBody", "UNAVAILABLE", "UNTOUCHED", "current_scope", "doom", "on_commit"]
