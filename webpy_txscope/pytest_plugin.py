"""pytest plugin: test that your web.py app reads fresh data and leaves no scope open.

Installed with the package (entry point ``pytest11: txscope``), so the fixtures
are available in every test suite; they cost nothing until a test asks for one.

Fixtures:

* ``txscope_uri``: the database URI your app should use in tests.
  ``--txscope-uri URI`` on the command line, else ``$TXSCOPE_TEST_URI``, else a
  SQLite file in the test's ``tmp_path``.  Override it to choose otherwise.
* ``txscope_app``: your web.py application.  **Override it** in your
  ``conftest.py``; the default fails and says so.
* ``txscope_testapp``: ``paste.fixture.TestApp(txscope_app.wsgifunc())``.
* ``txscope_fresh_read``: :func:`assert_fresh_read` bound to
  ``txscope_testapp`` and ``txscope_uri``.

Helpers, importable from this module: :func:`assert_fresh_read`,
:func:`count_queries` and :func:`assert_scope_closed`.  ``cookbook/testing.org``
shows a whole example.

Loading the plugin needs no database, no app and no Paste: pytest loads it
in every run, so everything else is imported by the fixture or helper that
needs it.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import threading
from typing import Any, Callable, Iterator, List, Optional, Sequence, Union

import pytest

ENV_URI = "TXSCOPE_TEST_URI"

#: A request: ``"/path"`` (a GET), ``(method, path)``, ``(method, path, body)``,
#: ``(method, path, body, headers)``, or a callable taking the TestApp and
#: returning its response.
RequestSpec = Union[str, Sequence[Any], Callable[[Any], Any]]


# -- fixtures --------------------------------------------------------------------


def pytest_addoption(parser):
    group = parser.getgroup("txscope", "webpy_txscope")
    group.addoption(
        "--txscope-uri", default=None, metavar="URI",
        help="database URI for the txscope_uri fixture (default: $%s, else a SQLite file in tmp_path)" % ENV_URI)


#: Deprecation warnings that the libraries this package stands on raise about
#: themselves, not about the user's code: (message, module that warns).
FOREIGN_WARNINGS = (
    ("'cgi' is deprecated", "formencode"),  # FormEncode, imported by SQLObject
    ("'db' is deprecated", "sqlobject"),  # SQLObject's arguments to PyMySQL
    ("'passwd' is deprecated", "sqlobject"),
    ("The 'reconnect' argument is deprecated", "sqlobject"),
    ("The reconnect parameter of ping", "sqlobject"),
)


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_load_initial_conftests(early_config, parser, args):
    # Outside pytest's own wrapper of this hook, which applies the filters
    # while the conftest.py files (importing the app, SQLObject, FormEncode) load.
    _ignore_foreign_warnings(early_config)
    yield


def pytest_configure(config):
    _ignore_foreign_warnings(config)  # the plugin was loaded late, by a conftest.py


def _ignore_foreign_warnings(config) -> None:
    present = config.getini("filterwarnings")
    for message, module in FOREIGN_WARNINGS:
        line = f"ignore:{message}:DeprecationWarning:{module}"
        if line not in present:
            config.addinivalue_line("filterwarnings", line)


@pytest.fixture
def txscope_uri(request, tmp_path) -> str:
    """The database URI the app under test should use (override to choose another way).

    Under pytest-xdist a server URI names a database of each worker's own
    (``<database>_gw0``, ...), created for the session and dropped after it,
    so that workers never see each other's rows.
    """
    configured = request.config.getoption("--txscope-uri") or os.environ.get(ENV_URI)
    if configured and _worker(request.config) and not configured.startswith("sqlite"):
        return request.getfixturevalue("_txscope_worker_uri")
    return configured or "sqlite:" + str(tmp_path / "txscope.db")


def _worker(config) -> str | None:
    return getattr(config, "workerinput", {}).get("workerid")


@pytest.fixture(scope="session")
def _txscope_worker_uri(request) -> Iterator[str]:
    uri = request.config.getoption("--txscope-uri") or os.environ[ENV_URI]
    worker_uri, create, drop = _worker_database(uri, _worker(request.config) or "")
    _run_outside(uri, [drop, create])
    yield worker_uri
    _run_outside(uri, [drop])


def _worker_database(uri: str, worker: str) -> tuple[str, str, str]:
    """This worker's URI, and the statements that create and drop its database
    (run on a connection to the configured database, which must exist)."""
    from ._uri import _HOST, _split

    head, userinfo, rest = _split(uri) or (None, None, "")
    host = _HOST.match(rest)
    if head is None or host is None:
        raise pytest.UsageError(f"--txscope-uri: cannot tell the database name in {mask_uri(uri)!r}")
    path, question, query = rest[host.end():].partition("?")
    name = f"{path.strip('/') or 'txscope'}_{worker}"
    if not name.replace("_", "").isalnum():
        raise pytest.UsageError(f"--txscope-uri: a database name of letters, digits and _ is needed "
                                f"for one database per pytest-xdist worker, not {path!r}")
    auth = "" if userinfo is None else userinfo + "@"
    worker_uri = f"{head}{auth}{rest[:host.end()]}/{name}{question}{query}"
    if head.lower().startswith("mysql"):
        return worker_uri, f"CREATE DATABASE `{name}`", f"DROP DATABASE IF EXISTS `{name}`"
    return worker_uri, f'CREATE DATABASE "{name}"', f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'


def mask_uri(uri: str) -> str:
    from ._uri import mask

    return mask(uri)


@pytest.fixture
def txscope_app():
    """Your web.py application: override this fixture in your conftest.py."""
    pytest.fail(
        "the txscope_app fixture is not overridden: define it in your conftest.py to return your "
        "web.py application, e.g.\n\n"
        "    @pytest.fixture\n"
        "    def txscope_app(txscope_uri):\n"
        "        return myapp.make_app(txscope_uri)\n",
        pytrace=False)


@pytest.fixture
def txscope_testapp(txscope_app):
    """A ``paste.fixture.TestApp`` around ``txscope_app``."""
    return _testapp(txscope_app)


@pytest.fixture
def txscope_fresh_read(txscope_testapp, txscope_uri):
    """:func:`assert_fresh_read` on ``txscope_testapp``, with SQL changes run on ``txscope_uri``."""
    return functools.partial(assert_fresh_read, txscope_testapp, uri=txscope_uri)


def _testapp(app):
    """A TestApp for *app*: a TestApp already, a web.py application, or a WSGI callable."""
    if hasattr(app, "get") and hasattr(app, "post") and not hasattr(app, "wsgifunc"):
        return app  # paste.fixture.TestApp or webtest.TestApp
    try:
        from paste.fixture import TestApp
    except ImportError:
        raise ImportError("the txscope pytest helpers need Paste to send requests: "
                          "pip install 'webpy_txscope[testing]' (or pip install Paste)") from None
    wsgi = app.wsgifunc() if hasattr(app, "wsgifunc") else app
    if not callable(wsgi):
        raise TypeError("expected a web.py application, a WSGI callable or a TestApp, not %r" % (app,))

    class _TestApp(TestApp):
        def do_request(self, req, status):
            __tracebackhide__ = True
            try:
                return super().do_request(req, status)
            except Exception as e:
                message = _no_connection(e, f"{req.environ.get('REQUEST_METHOD', 'GET')} {req.url}")
                if message is None:
                    raise
            # Out of the except block: the one line, without the chain of tracebacks.
            pytest.fail(message, pytrace=False)

    return _TestApp(wsgi)


#: What SQLObject says when a model is used with no connection bound.
NO_CONNECTION = "No connection has been defined for this thread or process"


def _no_connection(error: BaseException, request: str) -> str | None:
    """The one-line failure for *error* if it is SQLObject finding no connection (in the
    traceback web.py wrote, or in a 500 page): the app runs without its scope."""
    seen: BaseException | None = error
    while seen is not None:
        if NO_CONNECTION in str(seen):
            return (f"{request}: the request found no database connection (SQLObject: {NO_CONNECTION!r}); "
                    "is the app's processor missing?  app.add_processor(txscope(uri))")
        seen = seen.__cause__ or seen.__context__
    return None


# -- assert_fresh_read -------------------------------------------------------------


def assert_fresh_read(app, *, write: RequestSpec, change: "Union[str, Sequence[str], Callable[[], Any]]",
                      read: RequestSpec, expect: str, stale: Optional[str] = None,
                      uri: Optional[str] = None):
    """Fail unless a read sees a change made outside the app after a write.

    The stale-data bug in three steps: a *write* request (it also leaves the
    row in SQLObject's cache), a *change* of that row from outside the app,
    then a *read* request whose response must contain *expect*.  An app that
    keeps a process-wide connection answers the read from its cache and fails.

    *write* and *read* are requests: ``"/path"`` (GET), ``(method, path)``,
    ``(method, path, body)`` or ``(method, path, body, headers)``, where a dict
    body is form-encoded, or JSON-encoded when ``headers`` says
    ``Content-Type: application/json``; or a callable taking the TestApp and
    returning the response.  *app* is a TestApp, a web.py application or a
    WSGI callable.

    *change* is what another process does: SQL (a string or a list of them)
    run on a new connection of its own to *uri*, in autocommit, sharing
    nothing with the app's connection; or any callable taking no arguments.
    *stale*, if given, is the value that must not come back: the read fails
    if it shows *stale* anywhere but inside *expect*, even when it also shows
    *expect*.

    Returns the read's response.  Example (the cookbook's JSON API)::

        assert_fresh_read(
            testapp,
            write=("POST", "/api/users/1", {"fullname": "Before"}, {"Content-Type": "application/json"}),
            change="UPDATE users SET fullname = 'After' WHERE id = 1",
            read="/api/users/1",
            expect="After", stale="Before", uri=txscope_uri,
        )
    """
    __tracebackhide__ = True
    if stale is not None and stale == expect:
        raise ValueError("assert_fresh_read: stale and expect are the same value, %r" % (stale,))
    testapp = _testapp(app)
    _send(testapp, write, "write")
    if callable(change):
        change()
    else:
        if uri is None:
            raise TypeError("assert_fresh_read(change=SQL) needs uri= to reach the database from outside the app")
        _run_outside(uri, [change] if isinstance(change, str) else list(change))
    with count_queries() as queries:
        response = _send(testapp, read, "read")
    body = _text(response)
    shows_stale = _shows(body, stale, expect)
    if expect in body and not shows_stale:
        return response
    if expect in body:
        lines = ["assert_fresh_read: the read %s shows %r, but also the old value %r, although the row "
                 "was changed outside the app before it: the app served stale data." % (_describe(read), expect, stale)]
    else:
        lines = ["assert_fresh_read: the read %s does not show %r, although the row was changed outside "
                 "the app before it: the app served stale data." % (_describe(read), expect)]
        if shows_stale:
            lines.append("It still shows the old value %r." % stale)
    if not queries.selects:
        lines.append("The read sent no SELECT (%d statements): SQLObject answered from the cache of a "
                     "connection that outlived the write's request." % queries.count)
    lines.append("Every request needs its own transaction: app.add_processor(txscope(uri)).")
    lines.append("Response body: %r" % (body[:500],))
    pytest.fail("\n".join(lines), pytrace=False)


def _shows(body: str, stale: Optional[str], expect: str) -> bool:
    """True if *body* shows *stale* other than as a part of *expect*."""
    if not stale:
        return False
    if stale in expect:
        return stale in body.replace(expect, "")
    return stale in body


def _send(testapp, spec: RequestSpec, what: str):
    __tracebackhide__ = True
    if callable(spec):
        return spec(testapp)
    if isinstance(spec, str):
        method, path, body, headers = "GET", spec, None, None
    else:
        method, path, body, headers = (tuple(spec) + (None, None))[:4]
    headers = dict(headers or {})
    if isinstance(body, (dict, list)) and _header(headers, "Content-Type").startswith("application/json"):
        body = json.dumps(body)
    send = getattr(testapp, method.lower(), None)
    if send is None:
        raise ValueError("%s request %r: the TestApp has no method %r" % (what, spec, method.lower()))
    kwargs = {"headers": headers} if headers else {}
    try:
        return send(path, body, **kwargs) if body is not None else send(path, **kwargs)
    except pytest.fail.Exception:
        raise
    except Exception as e:
        message = (_no_connection(e, "assert_fresh_read: the %s request %s" % (what, _describe(spec)))
                   or "assert_fresh_read: the %s request %s failed: %s" % (what, _describe(spec), e))
    pytest.fail(message, pytrace=False)


def _header(headers: dict, name: str) -> str:
    for key, value in headers.items():
        if key.lower() == name.lower():
            return str(value).lower()
    return ""


def _describe(spec: RequestSpec) -> str:
    if callable(spec):
        return getattr(spec, "__name__", repr(spec))
    if isinstance(spec, str):
        return "GET " + spec
    return "%s %s" % tuple(spec)[:2]


def _text(response) -> str:
    text = getattr(response, "text", None)
    if isinstance(text, str):
        return text
    body = getattr(response, "body", response)
    return body.decode("utf-8", "replace") if isinstance(body, bytes) else str(body)


def _run_outside(uri: str, statements: List[str]) -> None:
    """Run *statements* as another process would: a new connection, autocommit."""
    from sqlobject.dbconnection import dbConnectionForScheme

    from ._uri import _normalize

    connection = dbConnectionForScheme(uri.split(":", 1)[0]).connectionFromURI(_normalize(uri))
    try:
        for sql in statements:
            connection.query(sql)
    finally:
        connection.close()


# -- count_queries ---------------------------------------------------------------------


class QueryLog:
    """The SQL statements SQLObject sent while :func:`count_queries` was active."""

    def __init__(self) -> None:
        self.statements: List[str] = []

    @property
    def count(self) -> int:
        return len(self.statements)

    @property
    def selects(self) -> List[str]:
        return [s for s in self.statements if s.lstrip().upper().startswith(("SELECT", "WITH"))]

    def __repr__(self) -> str:
        return "<QueryLog %d statements: %r>" % (self.count, self.statements)


_counting_lock = threading.Lock()
_active_logs: List[QueryLog] = []
_patched: dict = {}  # connection class -> its own _executeRetry before patching
_in_execute = threading.local()


@contextlib.contextmanager
def count_queries() -> Iterator[QueryLog]:
    """Count the SQL statements SQLObject sends, on every connection and thread.

    ::

        with count_queries() as queries:
            testapp.get("/users/1")
        assert queries.selects, queries

    Every statement goes through a connection class's ``_executeRetry``: in a
    scope's transaction, in a plain ``transaction()`` and in autocommit alike.
    Driver-level COMMIT, ROLLBACK and autocommit switches are not statements
    SQLObject sends and are not counted.  Nested blocks each count everything.
    The connection classes are restored when the last block exits.
    """
    log = QueryLog()
    with _counting_lock:
        if not _active_logs:
            _patch()
        _active_logs.append(log)
    _forget_cached_method()
    try:
        yield log
    finally:
        with _counting_lock:
            _active_logs.remove(log)
            if not _active_logs:
                _unpatch()


def _patch() -> None:
    from sqlobject.dbconnection import DBAPI

    for module in ("sqlite.sqliteconnection", "postgres.pgconnection", "mysql.mysqlconnection"):
        with contextlib.suppress(ImportError):
            __import__("sqlobject." + module)
    classes, todo = [], [DBAPI]
    while todo:
        cls = todo.pop()
        classes.append(cls)
        todo.extend(cls.__subclasses__())
    for cls in classes:
        original = cls.__dict__.get("_executeRetry")
        if original is not None and cls not in _patched:
            _patched[cls] = original
            cls._executeRetry = _counting(original)


def _unpatch() -> None:
    for cls, original in _patched.items():
        if getattr(cls.__dict__.get("_executeRetry"), "_txscope_original", None) is original:
            cls._executeRetry = original
    _patched.clear()


def _counting(original):
    @functools.wraps(original)
    def _executeRetry(self, conn, cursor, query):
        # Still bound in a transaction that outlived the block: a plain pass-through.
        if not _active_logs or getattr(_in_execute, "busy", False):
            return original(self, conn, cursor, query)
        text = query.decode("utf-8", "replace") if isinstance(query, bytes) else str(query)
        for log in tuple(_active_logs):
            log.statements.append(text)
        _in_execute.busy = True
        try:
            return original(self, conn, cursor, query)
        finally:
            _in_execute.busy = False

    _executeRetry._txscope_original = original
    return _executeRetry


def _forget_cached_method() -> None:
    # A scope's transaction keeps the methods it looked up (ScopeTransaction.
    # __getattr__); every one already open, on any thread, must look
    # _executeRetry up again to be counted.
    from . import _metrics
    from ._tx import ScopeTransaction

    for scope in list(_metrics._open):
        scope.tx.__dict__.pop("_executeRetry", None)
    for connection in _thread_connections().values():
        if isinstance(connection, ScopeTransaction):
            connection.__dict__.pop("_executeRetry", None)


def _thread_connections(hub=None) -> dict:
    """``threadConnection`` of every thread that set one: {thread's dict id: connection}.

    A ``threading.local`` has no public list of its threads; CPython's keeps
    each thread's dict among its references, which is all a test helper needs.
    """
    import gc

    from sqlobject import sqlhub

    local = (sqlhub if hub is None else hub).threadingLocal
    found = {}
    for referent in gc.get_referents(local):
        if isinstance(referent, dict):
            for value in referent.values():
                if isinstance(value, dict) and "connection" in value:
                    found[id(value)] = value["connection"]
    return found


# -- assert_scope_closed ---------------------------------------------------------------


def assert_scope_closed(hub=None) -> None:
    """Fail if a scope or a transaction outlived its request.

    Checks, in order: no scope open on this thread (``current_scope()``), none
    open in the process (``open_scopes()``), ``hub.threadConnection`` not a
    transaction (finished or not) and not ``None``, ``hub.processConnection``
    not a transaction, no other thread's ``threadConnection`` a transaction,
    and no unfinished transaction left holding a connection without being
    bound anywhere (on PostgreSQL: a session idle in transaction).  *hub*
    defaults to SQLObject's ``sqlhub``.  Nothing is cleaned up: a failure
    leaves the state as it found it, to be inspected.  A transaction an
    earlier test dropped is reported too until the garbage collector ends it
    (``gc.collect()`` first, if that test is not yours to fix).
    """
    __tracebackhide__ = True
    from sqlobject import sqlhub
    from sqlobject.dbconnection import Transaction

    from ._metrics import oldest_scope_age, open_scopes
    from .core import current_scope

    hub = sqlhub if hub is None else hub
    problems = []
    scope = current_scope()
    if scope is not None:
        problems.append("a scope is still open on this thread (opened %.3fs ago on %s)"
                        % (scope.age, scope.manager.name))
    count = open_scopes()
    if count:
        problems.append("%d scope(s) open in this process, the oldest for %.3fs"
                        % (count, oldest_scope_age()))
    missing = object()
    thread_connection = getattr(hub.threadingLocal, "connection", missing)
    if isinstance(thread_connection, Transaction):
        state = "a finished transaction" if thread_connection._obsolete else "a transaction nobody will end"
        problems.append("threadConnection is %s (%r): the next request on this thread uses it"
                        % (state, thread_connection))
    elif thread_connection is None:
        problems.append("threadConnection is None (as sqlobject.wsgi_middleware leaves it): "
                        "this thread no longer falls back to processConnection")
    process_connection = hub.__dict__.get("processConnection")
    if isinstance(process_connection, Transaction):
        problems.append("processConnection is a transaction (%r): every thread shares it"
                        % (process_connection,))
    bound = {id(thread_connection), id(process_connection)}
    for key, connection in _thread_connections(hub).items():
        if key == id(hub.threadingLocal.__dict__):
            continue
        bound.add(id(connection))
        if isinstance(connection, Transaction):
            state = "a finished transaction" if connection._obsolete else "a transaction nobody will end"
            problems.append("another thread's threadConnection is %s (%r): its next request uses it"
                            % (state, connection))
    from . import _metrics

    in_scopes = {id(scope.tx) for scope in list(_metrics._open)}
    for tx in _open_transactions():
        if id(tx) not in bound and id(tx) not in in_scopes:
            problems.append("a transaction bound to no thread still holds a connection%s (%r): nothing will "
                            "end it but the garbage collector" % (_server_state(tx), tx))
    if problems:
        pytest.fail("assert_scope_closed: " + "; ".join(problems), pytrace=False)


def _open_transactions() -> list:
    """Every unfinished SQLObject transaction of the process that holds a driver connection."""
    import gc

    from sqlobject.dbconnection import Transaction

    found = []
    for obj in gc.get_objects():
        if isinstance(obj, Transaction):
            state = obj.__dict__
            if not state.get("_obsolete", True) and (state.get("_connection") or state.get("_raw")):
                found.append(obj)
    return found


def _server_state(tx) -> str:
    """", in a transaction on the server" when the driver can tell, else ""."""
    raw = tx.__dict__.get("_raw") or tx.__dict__.get("_connection")
    status = getattr(getattr(raw, "info", None), "transaction_status", None)  # psycopg 3
    if status is None and hasattr(raw, "get_transaction_status"):  # psycopg2
        status = raw.get_transaction_status()
    return ", in a transaction on the server" if status is not None and int(status) in (2, 3) else ""
