"""The WSGI middleware's rules, on plain WSGI applications, on every database and driver."""

import gc
import io
import os
import pathlib
import re
import shutil
import sqlite3
import subprocess
import sys
import textwrap
from wsgiref.util import setup_testing_defaults

import pytest
from paste.deploy import loadapp
from paste.fixture import TestApp
from sqlobject import sqlhub

from models import User
from webpy_txscope import (
    CommitFailed, ConfigurationError, ScopeManager, TxScopeMiddleware, current_scope, open_scopes, stats,
    strict_commit_veto, txscope,
)
from webpy_txscope.wsgi import OPTIONS, SETTINGS, filter_app_factory
from webapps import make_app

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEXT = [("Content-Type", "text/plain")]


def write(value="written", user_id=1):
    User.get(user_id).fullname = value


def written(backend):
    return backend.fullname(1) == "written"


def untouched(backend):
    return backend.fullname(1) == "Full 1"


@pytest.fixture
def wrap(scope, backend):
    """``wrap(app, **options)``: *app* behind a new middleware on the test database."""
    return lambda app, **options: TxScopeMiddleware(app, backend.uri, **options)


def answering(status, work=write, body=b"answer", headers=TEXT):
    """A WSGI application that does *work* and answers *status* with a complete body."""
    def app(environ, start_response):
        work()
        start_response(status, list(headers))
        return [body]

    return app


def streaming(*steps):
    """A WSGI application whose body runs *steps* in turn, yielding each one's result."""
    def app(environ, start_response):
        start_response("200 OK", list(TEXT))
        for step in steps:
            yield step() or b"chunk "

    return app


def call(app, method="GET", body=b"", path="/", **environ):
    """Call *app* as a server does; return what reached start_response, and the body iterable."""
    environ.update(REQUEST_METHOD=method, PATH_INFO=path)
    if body:
        environ.update(CONTENT_LENGTH=str(len(body)))
    environ["wsgi.input"] = io.BytesIO(body)
    setup_testing_defaults(environ)
    started = []

    def start_response(status, headers, exc_info=None):
        started.append((status, headers))
        return lambda data: None

    return started, app(environ, start_response)


# -- how a request ends decides commit or rollback ------------------------------------


@pytest.mark.parametrize("status", ["200 OK", "303 See Other", "404 Not Found"])
def test_status_below_500_commits(wrap, backend, status):
    headers = TEXT + [("Location", "/elsewhere")] if status.startswith("3") else TEXT
    TestApp(wrap(answering(status, headers=headers))).get("/", status="*")
    assert written(backend)


def test_500_rolls_back(wrap, backend):
    TestApp(wrap(answering("500 Internal Server Error"))).get("/", status=500, expect_errors=True)
    assert untouched(backend)


def test_exception_from_the_app_rolls_back_and_propagates(wrap, backend):
    def crash(environ, start_response):
        write()
        raise ValueError("boom")

    with pytest.raises(ValueError):
        call(wrap(crash))
    assert untouched(backend)


def test_exception_with_exc_info_answer_rolls_back(wrap, backend):
    def app(environ, start_response):
        start_response("200 OK", list(TEXT))
        write()
        try:
            raise ValueError("boom")
        except ValueError:
            start_response("500 Internal Server Error", list(TEXT), sys.exc_info())
        return [b"sorry"]

    response = TestApp(wrap(app)).get("/", status=500, expect_errors=True)
    assert response.body == b"sorry"
    assert untouched(backend)


def test_body_without_start_response_is_an_error_and_rolls_back(wrap, backend):
    def app(environ, start_response):
        write()
        return [b"no status"]

    with pytest.raises(RuntimeError, match="without calling start_response"):
        call(wrap(app))
    assert untouched(backend)


def test_commit_veto_judges_the_headers(wrap, backend):
    TestApp(wrap(answering("200 OK", headers=TEXT + [("X-Tm", "abort")]))).get("/")
    assert untouched(backend)


def test_commit_veto_option(wrap, backend):
    TestApp(wrap(answering("404 Not Found"), commit_veto=strict_commit_veto)).get("/", status=404)
    assert untouched(backend)


# -- streaming bodies: bound while produced, committed when exhausted, before the last chunk ----


def test_streaming_body_commits_when_exhausted_before_its_last_chunk_is_delivered(wrap, backend):
    started, body = call(wrap(streaming(lambda: None, write, lambda: b"last")))
    assert started == [("200 OK", TEXT)]
    chunks = iter(body)
    assert next(chunks) == b"chunk "
    assert next(chunks) == b"chunk "
    assert untouched(backend)
    assert next(chunks) == b"last"
    assert written(backend), "committed before the last chunk reached the server"
    assert list(chunks) == []
    body.close()
    assert written(backend)


def test_streaming_body_through_a_server_commits(wrap, backend):
    response = TestApp(wrap(streaming(lambda: b"first ", write, lambda: b"last"))).get("/")
    assert response.body == b"first chunk last"
    assert written(backend)


def test_streaming_body_runs_bound_to_its_scope(wrap, scope):
    inside, between = [], []
    started, body = call(wrap(streaming(lambda: inside.append(sqlhub.threadConnection),
                                        lambda: inside.append(sqlhub.threadConnection))))
    for _ in body:
        between.append(hasattr(sqlhub.threadingLocal, "connection"))
    body.close()
    assert inside[0] is inside[1] and inside[0]._dbConnection is scope.connection
    assert between == [False, False]


def test_streaming_body_answering_500_rolls_back(wrap, backend):
    def app(environ, start_response):
        start_response("500 Internal Server Error", list(TEXT))
        write()
        yield b"failed"

    TestApp(wrap(app)).get("/", status=500, expect_errors=True)
    assert untouched(backend)


def test_body_that_raises_rolls_back(wrap, backend):
    def fail():
        raise ValueError("mid-stream")

    started, body = call(wrap(streaming(lambda: None, write, fail)))
    with pytest.raises(ValueError):
        list(body)
    body.close()
    assert untouched(backend)
    assert open_scopes() == 0


def test_body_closed_early_rolls_back(wrap, backend):
    started, body = call(wrap(streaming(write, lambda: None)))
    assert next(iter(body)) == b"chunk "
    body.close()
    assert untouched(backend)
    assert open_scopes() == 0


def test_body_never_closed_rolls_back_when_dropped(wrap, backend):
    started, body = call(wrap(streaming(write, lambda: None, lambda: None)))
    assert next(iter(body)) == b"chunk "
    gc.disable()  # dropped by reference count, not by a lucky collection
    try:
        del body
        assert open_scopes() == 0
    finally:
        gc.enable()
    assert untouched(backend)


def test_app_close_runs_inside_the_scope_before_commit(wrap, backend):
    class Body:
        def __iter__(self):
            yield b"body"

        def close(self):
            write()

    def app(environ, start_response):
        start_response("200 OK", list(TEXT))
        return Body()

    assert TestApp(wrap(app)).get("/").body == b"body"
    assert written(backend)


# -- a failed COMMIT: 500 while the answer can change, an abort after -----------------------


@pytest.mark.parametrize("body", ["list", "empty iterable"])
@pytest.mark.parametrize("status", ["200 OK", "303 See Other"])
def test_failed_commit_of_a_complete_body_answers_500(wrap, backend, make_commit_fail, status, body):
    def app(environ, start_response):
        write()
        make_commit_fail()
        start_response(status, TEXT + [("Location", "/done")])
        return [b"claims success"] if body == "list" else iter(())

    response = TestApp(wrap(app)).get("/", status=500, expect_errors=True)
    assert "Location" not in dict(response.headers)
    assert b"claims success" not in response.body
    assert untouched(backend)
    assert open_scopes() == 0


def test_failed_commit_after_streaming_began_raises_to_the_server_without_the_last_chunk(
        wrap, backend, make_commit_fail):
    started, body = call(wrap(streaming(write, lambda: (make_commit_fail(), b"last")[1])))
    assert started == [("200 OK", TEXT)]
    delivered = []
    with pytest.raises(CommitFailed):
        for chunk in body:
            delivered.append(chunk)
    assert delivered == [b"chunk "], "the last chunk must not reach a client that could take it for success"
    body.close()
    assert untouched(backend)
    assert open_scopes() == 0


# -- the database is unreachable: 503 with Retry-After ------------------------------------


def unreachable_uri(backend, tmp_path):
    if backend.kind == "sqlite":
        (tmp_path / "gone").mkdir()
        return "sqlite:" + str(tmp_path / "gone" / "app.db")
    return re.sub(r"@127\.0\.0\.1/", "@127.0.0.1:1/", backend.uri)


@pytest.mark.parametrize("app_does", ["raise", "answer 500"])
def test_unreachable_database_answers_503_with_retry_after(backend, tmp_path, app_does):
    def app(environ, start_response):
        try:
            User.get(1)
        except Exception:
            if app_does == "raise":
                raise
        start_response("500 Internal Server Error", list(TEXT))
        return [b"the app's own error page"]

    middleware = TxScopeMiddleware(app, unreachable_uri(backend, tmp_path), retry_after=7)
    if backend.kind == "sqlite":
        shutil.rmtree(tmp_path / "gone")
    response = TestApp(middleware).get("/", status=503, expect_errors=True)
    assert dict(response.headers)["Retry-After"] == "7"
    assert b"unavailable" in response.body
    assert open_scopes() == 0


# -- retries: only while nothing reached the server ---------------------------------------------


def _fail_transiently(backend):
    """Make a statement of this transaction fail the way a conflict does on each database."""
    conn = sqlhub.getConnection()
    if backend.kind == "postgres":
        conn.query("DO $$ BEGIN RAISE EXCEPTION 'conflict' USING ERRCODE = 'serialization_failure'; END $$")
    elif backend.kind == "mysql":
        conn.query("SIGNAL SQLSTATE '40001' SET MYSQL_ERRNO = 1213, MESSAGE_TEXT = 'Deadlock'")
    else:  # a real "database is locked": another connection holds the write lock
        timeout = conn.queryOne("PRAGMA busy_timeout")[0]
        other = sqlite3.connect(backend.uri.split(":", 1)[1], isolation_level=None, timeout=0)
        other.execute("BEGIN IMMEDIATE")  # fails if this transaction already wrote: fail first
        try:
            conn.query("PRAGMA busy_timeout = 0")
            conn.query("UPDATE users SET name = name WHERE id = 2")
        finally:
            other.execute("ROLLBACK")
            other.close()
            conn.query("PRAGMA busy_timeout = %d" % timeout)


def test_transient_failure_runs_the_request_again_with_its_body(wrap, backend):
    attempts = []

    def app(environ, start_response):
        attempts.append(environ["wsgi.input"].read(int(environ["CONTENT_LENGTH"])))
        if len(attempts) == 1:
            _fail_transiently(backend)
        write(attempts[-1].decode())
        start_response("200 OK", list(TEXT))
        return [b"attempt %d" % len(attempts)]

    response = TestApp(wrap(app, attempts=3, retry_backoff=0)).post("/", params=b"new name")
    assert response.body == b"attempt 2"
    assert attempts == [b"new name", b"new name"]
    assert backend.fullname(1) == "new name"


def test_transient_failure_the_app_answered_itself_is_retried(wrap, backend):
    attempts = []

    def app(environ, start_response):
        attempts.append(1)
        try:
            if len(attempts) == 1:
                _fail_transiently(backend)
            write()
        except Exception:
            start_response("500 Internal Server Error", list(TEXT))
            return [b"failed"]
        start_response("200 OK", list(TEXT))
        return [b"ok"]

    assert TestApp(wrap(app, attempts=2, retry_backoff=0)).get("/").body == b"ok"
    assert len(attempts) == 2
    assert written(backend)


def test_retried_attempt_sees_the_original_environ(wrap, backend):
    seen = []

    def app(environ, start_response):
        seen.append((environ["PATH_INFO"], "routed" in environ))
        environ["PATH_INFO"], environ["routed"] = "/rewritten", True
        if len(seen) == 1:
            _fail_transiently(backend)
        start_response("200 OK", list(TEXT))
        return [b"ok"]

    TestApp(wrap(app, attempts=2, retry_backoff=0)).get("/original")
    assert seen == [("/original", False), ("/original", False)]


def test_no_retry_once_streaming_began(wrap, backend):
    attempts = []

    def app(environ, start_response):
        attempts.append(1)
        start_response("200 OK", list(TEXT))
        yield b"first"
        _fail_transiently(backend)

    started, body = call(wrap(app, attempts=3, retry_backoff=0))
    with pytest.raises(Exception):
        list(body)
    body.close()
    assert len(attempts) == 1 and len(started) == 1


def test_no_retry_once_write_was_called(wrap, backend):
    attempts = []

    def app(environ, start_response):
        attempts.append(1)
        send = start_response("200 OK", list(TEXT))
        send(b"already sent")
        _fail_transiently(backend)
        return []

    with pytest.raises(Exception):
        call(wrap(app, attempts=3, retry_backoff=0))
    assert len(attempts) == 1


def test_body_of_unknown_length_is_replayed_on_retry(wrap, backend):
    seen = []

    def app(environ, start_response):
        seen.append(environ["wsgi.input"].read())
        if len(seen) == 1:
            _fail_transiently(backend)
        start_response("200 OK", list(TEXT))
        return [b"ok"]

    started, body = call(wrap(app, attempts=3, retry_backoff=0), method="POST", body=b"",
                         HTTP_TRANSFER_ENCODING="chunked", **{"wsgi.input_terminated": True})
    assert list(body) == [b"ok"]
    assert seen == [b"", b""] and started[-1][0] == "200 OK"


def test_retries_read_no_body_in_advance(wrap, backend):
    stream = io.BytesIO(b"a=1&b=2")
    seen = []

    def app(environ, start_response):
        seen.append(environ["wsgi.input"].read(3))
        if len(seen) == 1:
            _fail_transiently(backend)
        start_response("200 OK", list(TEXT))
        return [b"ok"]

    wrapped = wrap(app, attempts=3, retry_backoff=0)
    environ = {"REQUEST_METHOD": "POST", "PATH_INFO": "/", "CONTENT_LENGTH": "7", "wsgi.input": stream}
    setup_testing_defaults(environ)
    assert list(wrapped(environ, lambda status, headers, exc_info=None: None)) == [b"ok"]
    assert seen == [b"a=1", b"a=1"]
    assert stream.tell() == 3, "only what the application read is kept for the retry"


# -- the thread is left exactly as it was ---------------------------------------------------------


def _crash(environ, start_response):
    write()
    raise ValueError("boom")


def _stream_error(environ, start_response):
    start_response("200 OK", list(TEXT))
    yield b"first"
    raise ValueError("boom")


PATHS = {
    "200": lambda: answering("200 OK"),
    "500": lambda: answering("500 Internal Server Error"),
    "crash": lambda: _crash,
    "stream": lambda: streaming(write, lambda: None),
    "stream error": lambda: _stream_error,
    "closed early": lambda: streaming(write, lambda: None),
}


def _drive(app, path):
    try:
        started, body = call(app)
        if path == "closed early":
            next(iter(body))
        else:
            list(body)
        getattr(body, "close", lambda: None)()
    except ValueError:
        pass


@pytest.mark.parametrize("path", list(PATHS))
def test_thread_connection_restored_when_there_was_one(wrap, scope, path):
    before = scope.connection
    sqlhub.threadConnection = before
    _drive(wrap(PATHS[path]()), path)
    assert sqlhub.threadConnection is before
    assert current_scope() is None


@pytest.mark.parametrize("path", list(PATHS))
def test_thread_connection_deleted_when_there_was_none(wrap, path):
    _drive(wrap(PATHS[path]()), path)
    assert not hasattr(sqlhub.threadingLocal, "connection")
    assert current_scope() is None
    assert open_scopes() == 0


def test_app_sees_the_scope_transaction(wrap, scope):
    seen = []
    TestApp(wrap(answering("200 OK", work=lambda: seen.append(sqlhub.threadConnection)))).get("/")
    assert seen[0] is not scope.connection
    assert seen[0]._dbConnection is scope.connection


# -- one scope per request: nested adapters join it -------------------------------------------------


def test_nested_middleware_joins_one_transaction(wrap, backend):
    seen = []

    def app(environ, start_response):
        seen.append(sqlhub.threadConnection)
        write()
        start_response("500 Internal Server Error", list(TEXT))
        return [b"failed"]

    outer = wrap(TxScopeMiddleware(lambda environ, start_response: (
        seen.append(sqlhub.threadConnection), app(environ, start_response))[1], backend.uri))
    before = stats()
    TestApp(outer).get("/", status=500, expect_errors=True)
    assert seen[0] is seen[1]
    assert untouched(backend)
    assert stats()["rollbacks"] - before["rollbacks"] == 1
    assert stats()["commits"] == before["commits"]


def test_webpy_processor_inside_the_middleware_joins_it(wrap, scope, backend):
    seen = []

    def crash():
        seen.append(current_scope())
        write()
        raise ValueError("boom")

    before = stats()
    TestApp(wrap(make_app({"/": crash}, scope).wsgifunc())).get("/", status=500, expect_errors=True)
    assert seen[0].manager is not scope.manager  # the middleware's scope, joined by the processor
    assert untouched(backend)
    assert stats()["rollbacks"] - before["rollbacks"] == 1


def test_middleware_inside_a_webpy_request_joins_its_scope(wrap, scope, backend):
    seen = []
    inner = wrap(answering("200 OK", work=lambda: seen.append(sqlhub.threadConnection)))

    def handler():
        seen.append(sqlhub.threadConnection)
        write()
        started, body = call(inner)
        raise ValueError("crash after the WSGI app answered")

    make_app({"/": handler}, scope).request("/")
    assert seen[0] is seen[1]
    assert untouched(backend)


def test_shares_the_rules_of_an_existing_scope(scope, backend):
    strict = txscope(backend.uri, commit_veto=strict_commit_veto)
    middleware = TxScopeMiddleware(answering("404 Not Found"), scope=strict)
    assert middleware.manager is strict.manager
    TestApp(middleware).get("/", status=404)
    assert untouched(backend)


# -- SQLObject's own middleware, for comparison --------------------------------------------------------


def test_sqlobjects_middleware_commits_a_crashed_webpy_request_and_ours_does_not(wrap, backend):
    from sqlobject.wsgi_middleware import make_middleware

    def crash():
        write()
        raise ValueError("boom")

    webpy_app = make_app({"/": crash}).wsgifunc()
    theirs = make_middleware(webpy_app, {}, database=backend.uri, use_transaction=True)
    TestApp(theirs).get("/", status=500, expect_errors=True)
    assert written(backend)  # web.py answered the crash with a 500 page; they committed
    assert "connection" in vars(sqlhub.threadingLocal) and sqlhub.threadConnection is None

    backend.sql("UPDATE users SET fullname = 'Full 1' WHERE id = 1")
    del sqlhub.threadConnection
    TestApp(wrap(webpy_app)).get("/", status=500, expect_errors=True)
    assert untouched(backend)
    assert not hasattr(sqlhub.threadingLocal, "connection")


# -- configuration -----------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, message", [
    ({}, "needs a database URI"),
    ({"atempts": 2}, "unknown option 'atempts'"),
    ({"attempts": 0}, "attempts must be an integer of at least 1"),
    ({"isolation": "chaos"}, "unknown isolation level"),
    ({"scope": "not a scope"}, "scope= takes a txscope or a ScopeManager"),
])
def test_bad_options_fail_at_construction(backend, kwargs, message):
    uri = None if kwargs.get("scope") or not kwargs else backend.uri
    with pytest.raises(ConfigurationError, match=message):
        TxScopeMiddleware(answering("200 OK"), uri, **kwargs)


def test_scope_and_uri_together_are_refused(scope, backend):
    with pytest.raises(ConfigurationError, match="not both"):
        TxScopeMiddleware(answering("200 OK"), backend.uri, scope=scope)


def test_every_option_can_be_set_from_an_ini_file():
    assert set(SETTINGS) == set(OPTIONS)


# -- PasteDeploy --------------------------------------------------------------------------------


def ini_app(global_conf, **settings):
    """The application of the .ini files below: ``/<status>`` writes and answers that status."""
    def app(environ, start_response):
        write()
        start_response(environ["PATH_INFO"].strip("/") + " Answer", list(TEXT))
        return [b"answer"]

    return app


PIPELINE = """\
[DEFAULT]
debug = true

[pipeline:main]
pipeline = txscope answer

[filter:txscope]
use = egg:webpy_txscope#txscope
uri = {uri}
{settings}

[app:answer]
use = call:test_wsgi_middleware:ini_app
"""


def load_pipeline(tmp_path, uri, settings=""):
    ini = tmp_path / "app.ini"
    ini.write_text(PIPELINE.format(uri=uri, settings=settings))
    return loadapp("config:" + str(ini))


def test_pastedeploy_pipeline_runs_requests_in_a_scope(scope, backend, tmp_path):
    app = load_pipeline(tmp_path, backend.uri, "attempts = 2\nreadonly = false\ncommit_veto = strict\n"
                                               "isolation = read committed\nretry_after = 9\nmax_age = 30")
    assert isinstance(app, TxScopeMiddleware)
    manager = app.manager
    assert (manager.attempts, manager.commit_veto, manager.isolation, manager.retry_after, manager.max_age) \
        == (2, strict_commit_veto, "READ COMMITTED", 9, 30.0)
    TestApp(app).get("/404", status=404)
    assert untouched(backend)  # strict: 4xx rolls back
    TestApp(app).get("/200")
    assert written(backend)


def test_pastedeploy_commit_veto_by_dotted_name(scope, backend, tmp_path):
    app = load_pipeline(tmp_path, backend.uri, "commit_veto = webpy_txscope._policy:strict_commit_veto")
    assert app.manager.commit_veto is strict_commit_veto


@pytest.mark.parametrize("settings, message", [
    ("attempts = many", "attempts = 'many' is not usable"),
    ("readonly = perhaps", "readonly = 'perhaps' is not usable: write true or false"),
    ("commit_veto = lenient", "commit_veto = 'lenient' is not usable"),
    ("commit_veto = no_such_module:veto", "No module named 'no_such_module'"),
    ("commit_veto = webpy_txscope:no_such_veto", "no attribute 'no_such_veto'"),
    ("isolation = chaos", "unknown isolation level 'chaos'"),
    ("retry = 3", "unknown txscope setting 'retry'"),
])
def test_pastedeploy_bad_settings_fail_when_loading(scope, backend, tmp_path, settings, message):
    with pytest.raises(ConfigurationError, match=re.escape(message)):
        load_pipeline(tmp_path, backend.uri, settings)


def test_pastedeploy_without_uri_fails_when_loading(tmp_path):
    with pytest.raises(ConfigurationError, match="needs a database URI"):
        load_pipeline(tmp_path, "")


def test_filter_app_factory_called_directly(scope, backend):
    app = filter_app_factory(answering("200 OK"), {}, uri=backend.uri, attempts="3", readonly="yes")
    assert isinstance(app.manager, ScopeManager)
    assert (app.manager.attempts, app.manager.readonly) == (3, True)


# -- the cookbook ---------------------------------------------------------------------------------


def tangle(org_file, directory):
    """Write each ``#+begin_src ... :tangle NAME`` block of *org_file* to *directory*/NAME."""
    text = pathlib.Path(org_file).read_text(encoding="utf-8")
    blocks = re.findall(r"^[ \t]*#\+begin_src \S+ :tangle (\S+)\n(.*?)^[ \t]*#\+end_src", text, re.M | re.S)
    for name, code in blocks:
        (directory / name).write_text(textwrap.dedent(code))
    return [name for name, _ in blocks]


def test_cookbook_middleware_and_cache_blocks_work(tmp_path):
    names = tangle(os.path.join(ROOT, "cookbook", "middleware-and-cache.org"), tmp_path)
    assert {"notes.py", "notes.ini", "notes.wsgi"} <= set(names)
    check = textwrap.dedent("""
        import runpy
        from paste.fixture import TestApp
        from webpy_txscope import TxScopeMiddleware

        application = runpy.run_path("notes.wsgi")["application"]
        assert isinstance(application, TxScopeMiddleware), application
        assert application.manager.attempts == 3
        app = TestApp(application)
        assert app.get("/").body == b"notes: 0\\n"
        assert app.post("/", params=b"first").body == b"notes: 1\\n"
        assert app.post("/", params=b"second").body == b"notes: 2\\n"
        assert app.get("/").body == b"notes: 2\\n"

        import notes
        assert TestApp(notes.application).get("/").body == b"notes: 2\\n"
        print("cookbook ok")
    """)
    result = subprocess.run([sys.executable, "-c", check], cwd=tmp_path, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "cookbook ok" in result.stdout
