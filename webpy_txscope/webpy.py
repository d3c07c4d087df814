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
import io
from typing import Any, Callable, Optional

import web
from sqlobject import sqlhub
from sqlobject.dbconnection import DBConnection

from ._errors import DISCONNECT
from ._policy import CommitVeto, default_commit_veto
from .core import (_MISSING, CommitFailed, Scope, ScopeManager, _local, current_scope, normalize_isolation,
                   unavailable_answer)


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
    longer than this many seconds).
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
        self.manager = ScopeManager(
            uri_or_connection, hub, attempts=attempts, isolation=isolation, readonly=readonly,
            commit_veto=commit_veto, retry_backoff=retry_backoff, retry_after=retry_after,
            max_age=max_age,
        )

    @property
    def connection(self) -> DBConnection:
        """The process's SQLObject connection (created once, pooled)."""
        return self.manager.connection

    def __repr__(self) -> str:
        return "<txscope %s>" % self.manager.name

    def transaction(self, isolation: Optional[str] = _MISSING, readonly: Optional[bool] = _MISSING):
        """``with load_sqlo.transaction():`` the same rules for a script or a cron job."""
        return self.manager.transaction(isolation, readonly)

    def __call__(self, handler: Optional[Callable[[], Any]] = None) -> Any:
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
        replay = _Replay(ctx) if manager.attempts > 1 else None
        attempt = 0
        while True:
            attempt += 1
            scope = manager.open(attempt)
            answer = None
            try:
                result = handler()
            except web.HTTPError as e:
                answer = e
            except BaseException as e:
                manager.close(scope, False, "%s escaped" % type(e).__name__)
                raise
            else:
                if hasattr(result, "__next__"):
                    return _ScopedBody(scope, result)
                if manager.close_untouched(scope):
                    return result  # never touched the database: nothing to decide
            status = ctx.status
            commit = manager.verdict(status, ctx.headers)
            # web.py turned the handler's exception into a 500 whose context
            # still holds it: a serialization failure there is worth a retry.
            if not commit and replay is not None and manager.should_retry(scope, answer):
                manager.close(scope, False, "transient error")
                manager.backoff(scope)
                replay.reset(ctx)
                continue
            try:
                manager.close(scope, commit, "status " + status)
            except CommitFailed as e:
                if replay is not None and manager.should_retry(scope, e.__cause__):
                    manager.backoff(scope)
                    replay.reset(ctx)
                    continue
                if scope.failure_kind is DISCONNECT:
                    raise _unavailable(scope) from e
                ctx.headers = []
                raise web.internalerror() from e
            if not commit and scope.failure_kind is DISCONNECT:
                raise _unavailable(scope)
            if answer is not None:
                raise answer
            return result


def _unavailable(scope: Scope) -> web.HTTPError:
    status, headers, body = unavailable_answer(scope)
    web.ctx.headers = []
    return web.HTTPError(status, dict(headers), body)


class _Replay:
    """What a request looked like before its first attempt, to run it again."""

    def __init__(self, ctx):
        self.status = ctx.status
        self.headers = list(ctx.headers)
        env = ctx.env
        self.body = None
        if env.get("HTTP_TRANSFER_ENCODING") == "chunked" or (env.get("CONTENT_LENGTH") or "0") not in ("", "0"):
            self.body = web.data()
            env["wsgi.input"] = io.BytesIO(self.body)

    def reset(self, ctx) -> None:
        ctx.status = self.status
        ctx.headers = list(self.headers)
        if self.body is not None:
            ctx.env["wsgi.input"] = io.BytesIO(self.body)
            ctx.pop("_fieldstorage", None)


class _ScopedBody:
    """A streaming response body that runs inside its scope.

    The status line is already sent when the body runs, so the rules are:
    commit when the body is exhausted (and the commit veto agrees with the
    status), roll back when it raises or is closed early.  A failed COMMIT at
    the end raises to the server, which aborts the response.
    """

    def __init__(self, scope: Scope, body):
        self.scope = scope
        self.body = body
        scope.unbind()

    def __iter__(self):
        return self

    def __next__(self):
        scope = self.scope
        if scope is None:
            raise StopIteration
        scope.bind()
        try:
            return next(self.body)
        except StopIteration:
            self._end(scope.manager.verdict(web.ctx.get("status"), web.ctx.get("headers")), "stream exhausted")
            raise
        except BaseException as e:
            self._end(False, "stream raised %s" % type(e).__name__)
            raise
        finally:
            scope.unbind()

    def _end(self, commit: bool, reason: str) -> None:
        scope, self.scope = self.scope, None
        if scope is not None:
            scope.manager.close(scope, commit, reason)

    def close(self) -> None:
        if self.scope is not None:
            self._end(False, "stream closed early")
            close = getattr(self.body, "close", None)
            if close is not None:
                close()

    def __del__(self):
        self.close()


def scope_options(isolation: Optional[str] = _MISSING, readonly: Optional[bool] = _MISSING):
    """Decorate a handler method to give its transaction other characteristics.

    >>> from webpy_txscope import scope_options
    >>> class report:
    ...     @scope_options(isolation="REPEATABLE READ", readonly=True)
    ...     def GET(self):
    ...         return "..."

    The settings apply to that request's transaction only and must be chosen
    before the handler's first statement.
    """
    if isolation is not _MISSING:
        normalize_isolation(isolation)

    def decorate(fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            scope = current_scope()
            if scope is not None:
                scope.configure(isolation, readonly)
            return fn(*args, **kwargs)

        return wrapper

    return decorate


def no_scope(fn):
    """Decorate a handler method to run it outside the request's scope.

    For handlers that do not touch SQLObject (a health check, a long stream
    of static data) or that manage their own transactions.  The request's
    scope stays unbegun, so it costs no connection.
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        scope = current_scope()
        if scope is None:
            return fn(*args, **kwargs)
        scope.unbind()
        try:
            return fn(*args, **kwargs)
        finally:
            scope.bind()

    return wrapper
