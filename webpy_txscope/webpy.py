"""The web.py adapter: ``app.add_processor(txscope(uri))``.

web.py facts this adapter is built on (see the README's semantics table):

* every exception a handler raises reaches a processor as a 500
  ``HTTPError`` (web.py replaces it with ``app.internalerror()`` first), so
  the status, not the exception type, tells a crash from a redirect;
* redirects, 304 and 404 are ``HTTPError`` exceptions too: answers, not
  failures;
* a handler that returns a generator runs *after* the processor returned.
"""

from __future__ import annotations

import functools
import itertools
from typing import TYPE_CHECKING, Any, Callable, TypeVar

import web
from sqlobject import sqlhub
from sqlobject.dbconnection import DBConnection

from ._http import RequestBody, failure_answer
from ._options import UNSET, Unset, normalize_isolation
from ._policy import Headers, Status
from .core import RETRY, CommitFailed, Outcome, Scope, ScopedBody, ScopeManager, _local, current_scope
from .replicas import position_cookie, set_cookie

if TYPE_CHECKING:
    from contextlib import AbstractContextManager

    from typing_extensions import Unpack

    from ._options import ScopeOptions

F = TypeVar("F", bound=Callable[..., Any])


class txscope:
    """A web.py processor that runs each request in one SQLObject transaction.

    >>> import web
    >>> from webpy_txscope import txscope
    >>> app = web.application(("/", "index"), {})
    >>> load_sqlo = txscope("sqlite:/:memory:")
    >>> app.add_processor(load_sqlo)

    During a request the transaction is bound to ``hub.threadConnection`` and
    ends by these rules: commit on a normal return and on ``HTTPError`` below
    500 (redirects, 304, 404); roll back on 5xx, on any other exception, and
    when a ``commit_veto`` says so; a failed COMMIT answers 500.  The thread's
    previous connection is restored on every path.

    Called with no handler, or outside a request, it binds the connection to
    ``hub.processConnection``, so ``load_sqlo()`` makes models usable in a
    REPL or a script.

    Options: *attempts* (run the request again after a serialization failure
    or deadlock, up to this many times in total), *isolation*
    (``"SERIALIZABLE"``, ``"REPEATABLE READ"``, ``"READ COMMITTED"``),
    *readonly*, *commit_veto* (``callable(status, headers) -> bool``, True to
    roll back; see :func:`~webpy_txscope.strict_commit_veto`),
    *retry_backoff* (seconds, the base of the randomized delay between
    attempts), *retry_after* (the ``Retry-After`` of a 503 when the database
    is unreachable) and *max_age* (log a warning when a scope stays open
    longer than this many seconds).  *replicas*, *consistency*,
    *replica_wait* and *max_replica_lag* send safe-method requests to
    PostgreSQL streaming replicas without stale reads: see
    :mod:`webpy_txscope.replicas` and README.org, "Scaling out".
    """

    def __init__(self, uri_or_connection: str | DBConnection, hub: Any = sqlhub,
                 **options: Unpack[ScopeOptions]):
        self.manager = ScopeManager(uri_or_connection, hub, **options)

    @property
    def connection(self) -> DBConnection:
        """The process's SQLObject connection (created once, pooled)."""
        return self.manager.connection

    def __repr__(self) -> str:
        return f"<txscope {self.manager.name}>"

    def transaction(self, isolation: str | None | Unset = UNSET,
                    readonly: bool | Unset = UNSET) -> AbstractContextManager[Scope]:
        """``with load_sqlo.transaction():`` the same rules for a script or a cron job.

        Inside a request it is a nested block: a savepoint, undone if the block raises.
        """
        return self.manager.transaction(isolation, readonly)

    def __call__(self, handler: Callable[[], Any] | None = None) -> Any:
        manager = self.manager
        if handler is None:
            manager.bind_process()
            return None
        if "env" not in web.ctx:
            manager.bind_process()
            return handler()
        if _local.scope is not None and manager.active() is not None:
            return handler()  # already inside a scope: join it
        return self._handle(handler)

    def _handle(self, handler: Callable[[], Any]) -> Any:
        manager = self.manager
        ctx = web.ctx
        router = manager.router
        route = None
        if router is not None:
            route = router.request(ctx.method, position_cookie(ctx.env.get("HTTP_COOKIE")))
        replay = _Replay(ctx) if manager.attempts > 1 or router is not None else None
        for attempt in itertools.count(1):
            scope = manager.open(attempt, route)
            try:
                result = handler()
            except web.HTTPError as answer:
                # web.py made every exception a 500 answer; an answer is judged by its status.
                # (No local names the exception: its traceback holds this frame, and the
                # frames below hold the response body: a cycle only gc would end.)
                outcome = manager.finish(scope, ctx.status, ctx.headers,
                                         answer if _is_crash(ctx.status) else None, retry=replay is not None)
                if outcome is RETRY:
                    route = scope.route  # the primary, after a write on a replica
                    replay.reset(ctx)  # type: ignore[union-attr]
                    continue
                if route is not None and scope.position:
                    web.header(*set_cookie(scope.position))
                raise _failed(manager, outcome, scope) or answer
            except BaseException as e:  # KeyboardInterrupt, SystemExit
                manager.finish(scope, error=e, retry=False)
                raise
            if hasattr(result, "__next__"):
                if not scope.unscoped_body:
                    return _WebpyBody(scope, result)
                manager.finish(scope, ctx.status, ctx.headers)  # @no_scope: the body runs on its own
                return result
            if manager.end_if_untouched(scope):
                return result  # nothing to decide: no need to read web.ctx's status and headers
            outcome = manager.finish(scope, ctx.status, ctx.headers, retry=replay is not None)
            if outcome is RETRY:
                route = scope.route
                replay.reset(ctx)  # type: ignore[union-attr]
                continue
            if outcome.failed:
                raise _failed(manager, outcome, scope)  # type: ignore[misc]
            if route is not None and scope.position:
                web.header(*set_cookie(scope.position))
            return result


def _is_crash(status: str) -> bool:
    return status[:1] == "5"


def _failed(manager: ScopeManager, outcome: Outcome, scope: Scope) -> web.HTTPError | None:
    """The answer that replaces the handler's when *outcome* failed."""
    if not outcome.failed:
        return None
    status, headers, text = failure_answer(manager, outcome, scope)
    web.ctx.headers = []
    return web.HTTPError(status, dict(headers), text)


class _Replay:
    """What a request looked like before its first attempt, to run it again."""

    def __init__(self, ctx: Any):
        self.status = ctx.status
        self.headers = list(ctx.headers)
        stream = ctx.env.get("wsgi.input")
        self.body = ctx.env["wsgi.input"] = RequestBody(stream) if stream is not None else None

    def reset(self, ctx: Any) -> None:
        ctx.status = self.status
        ctx.headers = list(self.headers)
        if self.body is not None:
            self.body.rewind()
        ctx.pop("_fieldstorage", None)


class _WebpyBody(ScopedBody):
    """A generator handler's body; web.py pulls its first chunk before sending the status."""

    def __init__(self, scope: Scope, body: Any):
        super().__init__(scope, body, getattr(body, "close", None))

    def answer(self) -> tuple[Status, Headers]:
        ctx = web.ctx
        return ctx.get("status"), ctx.get("headers")

    def answered(self, error: BaseException) -> bool:
        # A redirect or a 4xx raised before the first chunk is the answer web.py sends.
        return isinstance(error, web.HTTPError) and not _is_crash(web.ctx.get("status") or "500")

    def failed(self, outcome: Outcome, scope: Scope) -> BaseException:
        if not self.delivered:  # web.py has not sent the status yet: it sends this answer instead
            return _failed(scope.manager, outcome, scope) or CommitFailed(scope.problem)
        return CommitFailed(f"the commit did not succeed: {scope.problem}")


def scope_options(isolation: str | None | Unset = UNSET, readonly: bool | Unset = UNSET,
                  replica: bool | Unset = UNSET, cache: bool | Unset = UNSET) -> Callable[[F], F]:
    """Decorate a handler method to give its transaction other characteristics.

    >>> from webpy_txscope import scope_options
    >>> class report:
    ...     @scope_options(isolation="REPEATABLE READ", readonly=True)
    ...     def GET(self):
    ...         return "..."

    The settings apply to that request's transaction only and must be chosen
    before the handler's first statement.  ``replica=False`` keeps a GET
    handler on the primary when the scope has ``replicas=``.  ``cache=False``
    makes its reads bypass the shared cache (its writes still invalidate it).
    """
    if isolation is not UNSET:
        normalize_isolation(isolation)

    def decorate(fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            scope = current_scope()
            if scope is not None:
                scope.configure(isolation, readonly, replica)
                if cache is False and scope.manager.cache is not None \
                        and isinstance(scope.tx, scope.manager.transaction_class):
                    scope.tx.bypass_cache("@scope_options(cache=False)")
            return fn(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate


def no_scope(fn: F) -> F:
    """Decorate a handler method to run it outside the request's scope.

    For handlers that do not touch SQLObject (a health check, a long stream
    of static data) or that manage their own transactions.  The request's
    scope stays unbegun, so it costs no connection.  A generator it returns
    runs outside any scope too: ``with load_sqlo.transaction():`` inside it
    commits each block on its own.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        scope = current_scope()
        if scope is None:
            return fn(*args, **kwargs)
        scope.unbind()
        try:
            result = fn(*args, **kwargs)
        finally:
            scope.bind()
        if hasattr(result, "__next__"):
            scope.unscoped_body = True
        return result

    return wrapper  # type: ignore[return-value]
