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

Nothing reaches the server's ``start_response`` until the answer is final:
the application returned a complete body, produced its first chunk, or called
``write()``.  That is what lets a transient failure run the request again and
an outage answer 503 instead of whatever the application had started to say.
"""

from __future__ import annotations

import importlib
import inspect
import io
import itertools
from typing import Any, Callable, Iterable, Optional

from sqlobject import sqlhub
from sqlobject.dbconnection import DBConnection

from ._errors import DISCONNECT, ConfigurationError
from ._policy import default_commit_veto, strict_commit_veto
from .core import CommitFailed, Scope, ScopeManager, unavailable_answer

#: The options a :class:`~webpy_txscope.core.ScopeManager` takes, by name.
OPTIONS = tuple(name for name, p in inspect.signature(ScopeManager).parameters.items()
                if p.kind is p.KEYWORD_ONLY)

COMMIT_FAILED = ("500 Internal Server Error", [("Content-Type", "text/plain; charset=utf-8")],
                 "The changes could not be saved; nothing of this request was kept.\n")


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

    def __init__(self, app: Callable, uri_or_connection: "str | DBConnection | None" = None, hub=sqlhub, *,
                 scope: Any = None, **options: Any):
        if not callable(app):
            raise ConfigurationError("TxScopeMiddleware wraps a WSGI application, not %r" % (app,))
        unknown = sorted(set(options) - set(OPTIONS))
        if unknown:
            raise ConfigurationError("unknown option %s: the options are %s"
                                     % (", ".join(map(repr, unknown)), ", ".join(OPTIONS)))
        if scope is not None:
            if uri_or_connection is not None or options or hub is not sqlhub:
                raise ConfigurationError("pass either scope= or a database URI with its options, not both: "
                                         "the scope already has a connection, a hub and rules")
            manager = getattr(scope, "manager", scope)
            if not isinstance(manager, ScopeManager):
                raise ConfigurationError("scope= takes a txscope or a ScopeManager, not %r" % (scope,))
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
        return "<TxScopeMiddleware %s around %r>" % (self.manager.name, self.app)

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        if self.manager.active() is not None:
            return self.app(environ, start_response)  # an outer scope owns this request: join it
        return self._handle(environ, start_response)

    def _handle(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        manager = self.manager
        replay = _Replay.capture(environ) if manager.attempts > 1 else None
        for attempt in itertools.count(1):
            scope = manager.open(attempt)
            response = _Response(start_response)
            try:
                body, chunks = _run(self.app, environ, response)
            except BaseException as e:
                manager.close(scope, False, "%s escaped" % type(e).__name__)
                if isinstance(e, Exception) and not response.sent:
                    if replay is not None and manager.should_retry(scope, e):
                        manager.backoff(scope)
                        replay.reset(environ)
                        continue
                    if scope.failure_kind is DISCONNECT:
                        return _answer(start_response, unavailable_answer(scope))
                raise
            if chunks is not None:
                scope.unbind()
                return _ScopedBody(scope, response, body, chunks)
            commit = manager.verdict(response.status, response.headers)
            if not commit and replay is not None and not response.sent and manager.should_retry(scope):
                manager.close(scope, False, "transient error")
                manager.backoff(scope)
                replay.reset(environ)
                continue
            try:
                manager.close(scope, commit, "status " + response.status)
            except CommitFailed as e:
                if response.sent:
                    raise  # write() already sent the status line: only an abort can tell
                if replay is not None and manager.should_retry(scope, e.__cause__):
                    manager.backoff(scope)
                    replay.reset(environ)
                    continue
                if scope.failure_kind is DISCONNECT:
                    return _answer(start_response, unavailable_answer(scope))
                return _answer(start_response, COMMIT_FAILED)
            if not commit and scope.failure_kind is DISCONNECT and not response.sent:
                return _answer(start_response, unavailable_answer(scope))
            response.send()
            return body


def _run(app: Callable, environ: dict, response: "_Response"):
    """Call *app* and run its body up to the first chunk.

    Returns ``(body, None)`` when the body is complete (a list or a tuple, or
    an iterable that ended before its first chunk: then closed and replaced by
    ``[]``), and ``(body, chunks)`` when it streams: the server's
    ``start_response`` was called, and *chunks* yields the first chunk again,
    then the rest.
    """
    body = app(environ, response.start_response)
    chunks = None
    try:
        if not isinstance(body, (list, tuple)):
            chunks = _prefetch(body)
            if chunks is None:
                ended, body = body, []
                _close(ended)
        if response.status is None:
            raise RuntimeError("the WSGI application %r returned a body without calling start_response()" % (app,))
        if chunks is not None:
            response.send()
    except BaseException:
        _close(body)
        raise
    return body, chunks


def _prefetch(body: Iterable[bytes]):
    iterator = iter(body)
    for first in iterator:
        return itertools.chain((first,), iterator)
    return None


def _close(body: Any) -> None:
    close = getattr(body, "close", None)
    if close is not None:
        close()


def _answer(start_response: Callable, answer) -> list:
    """Send an answer of our own, ``(status, headers, text)``, in place of the application's."""
    status, headers, text = answer
    data = text.encode("utf-8")
    start_response(status, list(headers) + [("Content-Length", str(len(data)))])
    return [data]


class _Response:
    """The status and headers the application chose, held back from the server until final."""

    __slots__ = ("status", "headers", "_server", "_write")

    def __init__(self, start_response: Callable):
        self.status: Optional[str] = None
        self.headers: Optional[list] = None
        self._server = start_response
        self._write: Optional[Callable] = None

    @property
    def sent(self) -> bool:
        """True once the server's start_response was called: the answer can no longer change."""
        return self._write is not None

    def start_response(self, status: str, headers: list, exc_info=None) -> Callable:
        if exc_info is not None:
            if self.sent:
                # Only the server knows whether the headers went out; if so it re-raises.
                self._write = self._server(status, headers, exc_info)
        elif self.status is not None:
            raise AssertionError("start_response() was called a second time without exc_info")
        self.status, self.headers = status, list(headers)
        return self.write

    def write(self, data: bytes) -> None:
        """The legacy ``write()`` callable: the answer becomes final at the first call."""
        self.send()
        self._write(data)

    def send(self) -> None:
        if self._write is None:
            self._write = self._server(self.status, self.headers)


class _Replay:
    """The request as it was before its first attempt, to run it again."""

    def __init__(self, environ: dict, body: bytes):
        self.environ = dict(environ)
        self.body = body
        environ["wsgi.input"] = io.BytesIO(body)

    @classmethod
    def capture(cls, environ: dict) -> Optional["_Replay"]:
        """Read the request body once (CONTENT_LENGTH bytes); None if its end cannot be known."""
        length = (environ.get("CONTENT_LENGTH") or "").strip()
        stream = environ["wsgi.input"]
        if length not in ("", "0"):
            if not length.isdigit():
                return None
            body = stream.read(int(length))
        elif environ.get("HTTP_TRANSFER_ENCODING"):
            if not environ.get("wsgi.input_terminated"):
                return None  # a chunked body the server does not end: it can be read only once
            body = stream.read()
        else:
            body = b""
        return cls(environ, body)

    def reset(self, environ: dict) -> None:
        """Undo what the last attempt did to *environ* (routing middleware edits PATH_INFO)."""
        environ.clear()
        environ.update(self.environ)
        environ["wsgi.input"] = io.BytesIO(self.body)


class _ScopedBody:
    """A streaming response body that runs inside its scope and ends it when closed.

    The status line went to the server with the first chunk, so the rules are:
    commit when the body was fully iterated and then closed (and the commit
    veto agrees with the status); roll back when it raises or is closed early.
    A failed COMMIT raises from ``close()`` to the server, which aborts.
    """

    def __init__(self, scope: Scope, response: _Response, body: Iterable[bytes], chunks):
        self._scope: Optional[Scope] = scope
        self._response = response
        self._body = body
        self._chunks = chunks
        self._exhausted = False

    def __iter__(self):
        return self

    def __next__(self) -> bytes:
        scope = self._scope
        if scope is None:
            raise StopIteration
        scope.bind()
        try:
            chunk = next(self._chunks)
        except StopIteration:
            scope.unbind()
            self._exhausted = True
            raise
        except BaseException as e:
            scope.unbind()
            self._end(False, "body raised %s" % type(e).__name__)
            raise
        scope.unbind()
        return chunk

    def close(self) -> None:
        if self._scope is not None:
            if self._exhausted:
                self._end(True, "body iterated and closed")
            else:
                self._end(False, "body closed early")

    def _end(self, commit: bool, reason: str) -> None:
        # Not a `finally` in __next__: only close() knows the server is done with the body.
        scope, self._scope = self._scope, None
        manager = scope.manager
        scope.bind()  # the application's close() may still use the database
        try:
            _close(self._body)
        except BaseException as e:
            manager.close(scope, False, "the body's close() raised %s" % type(e).__name__)
            raise
        if commit:
            commit = manager.verdict(self._response.status, self._response.headers)
        manager.close(scope, commit, reason)

    def __del__(self):
        if self._scope is not None:
            self._end(False, "body never closed")


# -- PasteDeploy -------------------------------------------------------------------


def _as_bool(text: str) -> bool:
    value = text.lower()
    if value in ("true", "yes", "on", "1"):
        return True
    if value in ("false", "no", "off", "0"):
        return False
    raise ValueError("write true or false")


def _as_commit_veto(text: str) -> Callable:
    named = {"default": default_commit_veto, "strict": strict_commit_veto}
    if text in named:
        return named[text]
    module, sep, attribute = text.partition(":")
    if not (sep and module and attribute):
        raise ValueError("write default, strict, or a function as package.module:function")
    target = importlib.import_module(module)
    for part in attribute.split("."):
        target = getattr(target, part)
    return target


#: How each option is read from the text of an .ini file.
SETTINGS = {
    "attempts": int,
    "isolation": str,
    "readonly": _as_bool,
    "commit_veto": _as_commit_veto,
    "retry_backoff": float,
    "retry_after": int,
    "max_age": float,
}


def filter_app_factory(app: Callable, global_conf: dict, uri: Optional[str] = None, **settings: str):
    """PasteDeploy's entry point: ``use = egg:webpy_txscope#txscope`` in a ``[filter:...]`` section.

    ``uri`` is required; the other settings are the options of
    :class:`TxScopeMiddleware` as text: ``attempts = 3``, ``readonly = true``,
    ``isolation = serializable``, ``commit_veto = strict`` (or ``default``, or
    ``package.module:function``), ``retry_backoff = 0.05``,
    ``retry_after = 10``, ``max_age = 30``.  A bad setting fails when the
    pipeline loads, with a :class:`~webpy_txscope.ConfigurationError`.
    """
    if not uri or not str(uri).strip():
        raise ConfigurationError("the txscope filter needs a database URI: add a line such as "
                                 "`uri = postgres://user@host/db` to its section")
    options = {}
    for name, text in settings.items():
        parse = SETTINGS.get(name)
        if parse is None:
            raise ConfigurationError("unknown txscope setting %r: the settings are uri, %s"
                                     % (name, ", ".join(SETTINGS)))
        try:
            options[name] = parse(str(text).strip())
        except (ValueError, ImportError, AttributeError) as e:
            raise ConfigurationError("txscope setting %s = %r is not usable: %s" % (name, text, e)) from None
    return TxScopeMiddleware(app, str(uri).strip(), **options)


__all__ = ["TxScopeMiddleware", "filter_app_factory"]
