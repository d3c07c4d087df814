"""The WSGI adapter: ``TxScopeMiddleware(app, uri)`` around any WSGI application.

The web.py processor's rules, applied to what a WSGI application tells its
server:

* the scope opens when the request starts and is bound to the thread while
  the application runs *and* while each chunk of its body is produced;
* the commit veto judges the status and headers passed to ``start_response``;
* an exception, a body that raises, or a body closed early rolls back;
* a body that is complete when the application returns (a list, or an
  iterable that ends before its first chunk) is committed before anything
  reaches the server, so a failed COMMIT still becomes a 500; a streaming body
  commits once it was fully iterated *and* closed, and a failed COMMIT then
  raises to the server, which aborts the response.

The server's ``start_response`` is called before COMMIT, so that a header it
refuses (CR/LF in a value, a hop-by-hop header) rolls back instead of
answering 500 for a write that was kept; nothing reaches the client until the
answer is final, and a transient failure runs the request again (the status
is then replaced through ``exc_info``), an outage answers 503.
"""

from __future__ import annotations

import importlib
import itertools
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator

from sqlobject import sqlhub
from sqlobject.dbconnection import DBConnection

from ._errors import ConfigurationError
from ._http import Answer, RequestBody, failure_answer
from ._options import OPTION_NAMES
from ._policy import Headers, Status, default_commit_veto, strict_commit_veto
from .core import RETRY, UNAVAILABLE, CommitFailed, Scope, ScopedBody, ScopeManager
from .replicas import position_cookie, set_cookie

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from ._options import ScopeOptions

#: The options a :class:`~webpy_txscope.core.ScopeManager` takes, by name.
OPTIONS = OPTION_NAMES

StartResponse = Callable[..., Callable[[bytes], Any]]


class TxScopeMiddleware:
    """WSGI middleware that runs each request in one SQLObject transaction.

    >>> from webpy_txscope import TxScopeMiddleware
    >>> def hello(environ, start_response):
    ...     start_response("200 OK", [("Content-Type", "text/plain")])
    ...     return [b"hello"]
    >>> application = TxScopeMiddleware(hello, "sqlite:/:memory:")

    *options* are those of :class:`~webpy_txscope.txscope` (*attempts*,
    *isolation*, *readonly*, *commit_veto*, *retry_backoff*, *retry_after*,
    *max_age*).  To share one set of rules with a web.py processor, pass it
    instead of a URI: ``TxScopeMiddleware(app, scope=load_sqlo)`` (a
    ``txscope`` or a :class:`~webpy_txscope.ScopeManager`).

    A request that arrives while a scope is already bound to the thread (an
    outer middleware, a web.py processor) joins that scope; its owner ends it.
    """

    def __init__(self, app: Callable[..., Any], uri_or_connection: str | DBConnection | None = None,
                 hub: Any = sqlhub, *, scope: Any = None, **options: Unpack[ScopeOptions]):
        if not callable(app):
            raise ConfigurationError(f"TxScopeMiddleware wraps a WSGI application, not {app!r}")
        if scope is not None:
            if uri_or_connection is not None or options or hub is not sqlhub:
                raise ConfigurationError("pass either scope= or a database URI with its options, not both: "
                                         "the scope already has a connection, a hub and rules")
            manager = getattr(scope, "manager", scope)
            if not isinstance(manager, ScopeManager):
                raise ConfigurationError(f"scope= takes a txscope or a ScopeManager, not {scope!r}")
        elif uri_or_connection is None:
            raise ConfigurationError("TxScopeMiddleware needs a database URI, for example "
                                     "'postgres://user@host/db', or scope=an existing txscope")
        else:
            manager = ScopeManager(uri_or_connection, hub, **options)
        self.app = app
        self.manager = manager

    @property
    def connection(self) -> DBConnection:
        """The process's SQLObject connection (created once, pooled)."""
        return self.manager.connection

    def __repr__(self) -> str:
        return f"<TxScopeMiddleware {self.manager.name} around {self.app!r}>"

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        manager = self.manager
        if manager.active() is not None:
            return self.app(environ, start_response)  # an outer scope owns this request: join it
        router = manager.router
        route = None
        if router is not None:
            route = router.request(environ.get("REQUEST_METHOD", "GET"),
                                   position_cookie(environ.get("HTTP_COOKIE")))
        replay = _Replay(environ) if manager.attempts > 1 or router is not None else None
        server = _Server(start_response)
        for attempt in itertools.count(1):
            scope = manager.open(attempt, route)
            response = _Response(server)
            try:
                body, chunks = _run(self.app, environ, response)
            except BaseException as e:
                retry = replay is not None and not server.written and isinstance(e, Exception)
                outcome = manager.finish(scope, error=e, retry=retry)
                if outcome is RETRY:
                    route = scope.route  # the primary, after a write on a replica
                    replay.reset(environ)  # type: ignore[union-attr]
                    continue
                if outcome is UNAVAILABLE and not server.written and isinstance(e, Exception):
                    return server.answer(failure_answer(manager, outcome, scope))
                raise
            if chunks is not None:
                return _WsgiBody(scope, response, body, chunks)
            try:
                response.send()  # the server checks the headers before anything is kept
            except BaseException as e:
                manager.finish(scope, error=e, retry=False)
                raise
            outcome = manager.finish(scope, response.status, response.headers,
                                     retry=replay is not None and not server.written)
            if outcome is RETRY:
                route = scope.route
                replay.reset(environ)  # type: ignore[union-attr]
                continue
            if outcome.failed:
                if server.written:  # write() already sent part of the body: only an abort can tell
                    raise CommitFailed(f"the commit did not succeed: {scope.problem}")
                return server.answer(failure_answer(manager, outcome, scope))
            if route is not None and scope.position and not server.written:
                # The server has the headers but sent nothing yet: they are given again, with the cookie.
                server.start(response.status, response.headers + [set_cookie(scope.position)])  # type: ignore
            return body
        raise AssertionError("unreachable")


def _run(app: Callable[..., Any], environ: dict[str, Any], response: _Response) -> tuple[Any, Iterator[Any] | None]:
    """Call *app* and run its body up to the first chunk.

    Returns ``(body, None)`` when the body is complete: a list or a tuple
    (closed here, inside the scope, if it has a ``close()``), a
    ``wsgi.file_wrapper`` (never wrapped, so the server can send the file
    itself), or an iterable that ended before its first chunk (closed and
    replaced by ``[]``).  Returns ``(body, chunks)`` when it streams: the
    server's ``start_response`` was called, and *chunks* yields the first
    chunk again, then the rest.
    """
    body = app(environ, response.start_response)
    chunks = None
    try:
        if isinstance(body, (list, tuple)):
            if hasattr(body, "close"):
                body.close()
                body = list(body)
        elif not _is_file_wrapper(body, environ):
            chunks = _prefetch(body)
            if chunks is None:
                ended, body = body, []
                _close(ended)
        if response.status is None:
            raise RuntimeError(f"the WSGI application {app!r} returned a body without calling start_response()")
        if chunks is not None:
            response.send()
    except BaseException:
        _close(body)
        raise
    return body, chunks


def _is_file_wrapper(body: Any, environ: dict[str, Any]) -> bool:
    wrapper = environ.get("wsgi.file_wrapper")
    return isinstance(wrapper, type) and isinstance(body, wrapper)


def _prefetch(body: Iterable[bytes]) -> Iterator[bytes] | None:
    iterator = iter(body)
    for first in iterator:
        return itertools.chain((first,), iterator)
    return None


def _close(body: Any) -> None:
    close = getattr(body, "close", None)
    if close is not None:
        close()


class _Replaced(Exception):
    """The ``exc_info`` that replaces a status the server has not sent yet."""


class _Server:
    """The server's ``start_response``, across the attempts of one request."""

    __slots__ = ("_start", "started", "written")

    def __init__(self, start_response: StartResponse):
        self._start = start_response
        self.started = False  # start_response was called (nothing is sent before the first write)
        self.written = False  # body bytes went out: the answer can no longer change

    def start(self, status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Callable[[bytes], Any]:
        if exc_info is None and self.started:
            # An earlier attempt's status, or the one a failed commit replaces.
            error = _Replaced("replaced before anything was sent")
            exc_info = (_Replaced, error, None)
        write = self._start(status, headers, exc_info) if exc_info is not None else self._start(status, headers)
        self.started = True
        return write

    def answer(self, answer: Answer) -> list[bytes]:
        """Send an answer of our own, ``(status, headers, text)``, in place of the application's."""
        status, headers, text = answer
        data = text.encode("utf-8")
        self.start(status, list(headers) + [("Content-Length", str(len(data)))])
        return [data]


class _Response:
    """The status and headers one attempt chose, held back from the server until final."""

    __slots__ = ("status", "headers", "_server", "_write")

    def __init__(self, server: _Server):
        self.status: str | None = None
        self.headers: list[tuple[str, str]] | None = None
        self._server = server
        self._write: Callable[[bytes], Any] | None = None

    def start_response(self, status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Callable[..., Any]:
        if exc_info is not None:
            if self._write is not None:
                # Only the server knows whether the headers went out; if so it re-raises.
                self._write = self._server.start(status, headers, exc_info)
        elif self.status is not None:
            raise AssertionError("start_response() was called a second time without exc_info")
        self.status, self.headers = status, list(headers)
        return self.write

    def write(self, data: bytes) -> None:
        """The legacy ``write()`` callable: the answer becomes final at the first call."""
        write = self.send()
        self._server.written = True
        write(data)

    def send(self) -> Callable[[bytes], Any]:
        if self._write is None:
            assert self.status is not None and self.headers is not None
            self._write = self._server.start(self.status, self.headers)
        return self._write


class _Replay:
    """The request as it was before its first attempt, to run it again."""

    def __init__(self, environ: dict[str, Any]):
        self.body = environ["wsgi.input"] = RequestBody(environ["wsgi.input"])
        self.environ = dict(environ)

    def reset(self, environ: dict[str, Any]) -> None:
        """Undo what the last attempt did to *environ* (routing middleware edits PATH_INFO)."""
        environ.clear()
        environ.update(self.environ)
        self.body.rewind()


class _WsgiBody(ScopedBody):
    """A streaming body; its status and headers are what the application passed to start_response."""

    def __init__(self, scope: Scope, response: _Response, body: Any, chunks: Iterator[Any]):
        super().__init__(scope, chunks, getattr(body, "close", None))
        self._response = response

    def answer(self) -> tuple[Status, Headers]:
        return self._response.status, self._response.headers


# -- PasteDeploy -------------------------------------------------------------------


def _as_bool(text: str) -> bool:
    value = text.lower()
    if value in ("true", "yes", "on", "1"):
        return True
    if value in ("false", "no", "off", "0"):
        return False
    raise ValueError("write true or false")


def _as_commit_veto(text: str) -> Callable[..., Any]:
    named = {"default": default_commit_veto, "strict": strict_commit_veto}
    if text in named:
        return named[text]
    module, sep, attribute = text.partition(":")
    if not (sep and module and attribute):
        raise ValueError("write default, strict, or a function as package.module:function")
    target: Any = importlib.import_module(module)
    for part in attribute.split("."):
        target = getattr(target, part)
    return target


#: How each option is read from the text of an .ini file.
SETTINGS: dict[str, Callable[[str], Any]] = {
    "attempts": int,
    "isolation": str,
    "readonly": _as_bool,
    "commit_veto": _as_commit_veto,
    "retry_backoff": float,
    "retry_after": int,
    "max_age": float,
    "replicas": lambda text: [uri.strip() for uri in text.replace("\n", ",").split(",") if uri.strip()],
    "consistency": str,
    "replica_wait": float,
    "max_replica_lag": float,
    "cache": str,
}


def filter_app_factory(app: Callable[..., Any], global_conf: dict[str, Any], uri: str | None = None,
                       **settings: str) -> TxScopeMiddleware:
    """PasteDeploy's entry point: ``use = egg:webpy_txscope#txscope`` in a ``[filter:...]`` section.

    ``uri`` is required; the other settings are the options of
    :class:`TxScopeMiddleware` as text: ``attempts = 3``, ``readonly = true``,
    ``isolation = serializable``, ``commit_veto = strict`` (or ``default``, or
    ``package.module:function``), ``retry_backoff = 0.05``,
    ``retry_after = 10``, ``max_age = 30``, ``replicas = postgres://app@r1/db,
    postgres://app@r2/db`` (commas or lines), ``consistency = strong``,
    ``replica_wait = 0.5``, ``max_replica_lag = 5``, ``cache = local`` (or a
    ``redis://`` URL).  A bad setting fails when the
    pipeline loads, with a :class:`~webpy_txscope.ConfigurationError`.
    """
    if not uri or not str(uri).strip():
        raise ConfigurationError("the txscope filter needs a database URI: add a line such as "
                                 "`uri = postgres://user@host/db` to its section")
    options = {}
    for name, text in settings.items():
        parse = SETTINGS.get(name)
        if parse is None:
            raise ConfigurationError(f"unknown txscope setting {name!r}: the settings are uri, {', '.join(SETTINGS)}")
        try:
            options[name] = parse(str(text).strip())
        except (ValueError, ImportError, AttributeError) as e:
            raise ConfigurationError(f"txscope setting {name} = {text!r} is not usable: {e}") from None
    return TxScopeMiddleware(app, str(uri).strip(), **options)


__all__ = ["TxScopeMiddleware", "filter_app_factory"]
