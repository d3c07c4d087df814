"""The edge paths: streaming handlers, nested blocks, forks, crashes with X-Tm, hooks, dropped streams.

Each rule on every database and driver (the ``backend`` fixture), through the
public API only.
"""

import gc
import io
import os
import sqlite3
import threading
from wsgiref.util import setup_testing_defaults

import pytest
import web
from sqlobject import sqlhub

from models import User
from webpy_txscope import (CommitFailed, Scope, TxScopeMiddleware, current_scope, doom, no_scope, on_commit,
                           open_scopes, stats, txscope)
from webapps import make_app


def write(value="written", user_id=1):
    User.get(user_id).fullname = value


def written(backend, user_id=1, value="written"):
    return backend.fullname(user_id) == value


def untouched(backend):
    return backend.fullname(1) == "Full 1"


def serve(app, path="/", method="GET", body=b""):
    """Call a web.py app's WSGI function as a server does; return (status list, body iterable)."""
    environ = {"REQUEST_METHOD": method, "PATH_INFO": path, "wsgi.input": io.BytesIO(body)}
    if body:
        environ["CONTENT_LENGTH"] = str(len(body))
    setup_testing_defaults(environ)
    started = []
    result = app.wsgifunc()(environ, lambda status, headers, exc_info=None: started.append(status))
    return started, result


def idle_in_transaction(backend):
    if backend.kind != "postgres":
        return 0
    return backend.sql("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                       "AND state LIKE 'idle in transaction%%'")[0][0]


# -- 1. a generator handler that answers with a redirect or a 4xx before its first chunk ------


@pytest.mark.parametrize("answer, status", [
    (lambda: web.seeother("/order/1"), "303 See Other"),
    (lambda: web.notfound(), "404 Not Found"),
], ids=["303", "404"])
def test_generator_answering_before_its_first_chunk_commits_like_a_plain_handler(scope, backend, answer, status):
    def handler():
        write()
        raise answer()
        yield "never"

    started, body = serve(make_app({"/": handler}, scope))
    list(body)
    assert started == [status]
    assert written(backend), "the client was sent to a result that must exist"
    assert open_scopes() == 0


def test_generator_crashing_before_its_first_chunk_rolls_back(scope, backend):
    def handler():
        write()
        raise ValueError("crash")
        yield "never"

    with pytest.raises(ValueError):  # web.py lets it reach the server, which answers 500
        serve(make_app({"/": handler}, scope))
    assert untouched(backend)
    assert open_scopes() == 0


# -- 2. @no_scope for generator handlers -----------------------------------------------------


def test_no_scope_generator_runs_outside_the_request_scope(scope, backend):
    class Batches:
        @no_scope
        def GET(self):
            web.header("Content-Type", "text/plain")
            return self.stream()

        def stream(self):
            for n in (1, 2):
                assert current_scope() is None
                with scope.transaction():
                    write(f"batch {n}", user_id=n)
                yield f"batch {n}\n"

    app = web.application(("/", "Batches"), {"Batches": Batches})
    app.add_processor(scope)
    started, body = serve(app)
    chunks = iter(body)
    next(chunks)
    next(chunks)  # batch 2 is committed once produced
    del chunks, body  # the client leaves early (web.py's body has no close(): the server drops it)
    assert written(backend, 1, "batch 1") and written(backend, 2, "batch 2")
    assert open_scopes() == 0


# -- 3. nested blocks are savepoints; their options are never silently ignored ------------


def test_nested_block_that_raises_is_undone_even_when_the_handler_catches_it(scope, backend):
    def handler():
        write("kept", user_id=2)
        try:
            with scope.transaction():
                write()
                raise ValueError("block failed")
        except ValueError:
            pass
        return "ok"

    assert make_app({"/": handler}, scope).request("/").status == "200 OK"
    assert untouched(backend), "the block promised: roll back on any exception"
    assert written(backend, 2, "kept"), "the request's own writes commit"


def test_nested_block_that_succeeds_commits_with_the_request(scope, backend):
    def handler():
        with scope.transaction():
            write()
        return "ok"

    make_app({"/": handler}, scope).request("/")
    assert written(backend)


def test_nested_run_that_raises_is_undone(scope, backend):
    def block():
        write()
        raise KeyError("x")

    def handler():
        with pytest.raises(KeyError):
            scope.manager.run(block)
        return "ok"

    assert make_app({"/": handler}, scope).request("/").status == "200 OK"
    assert untouched(backend)


def test_nested_block_reads_what_it_undid_again_from_the_database(scope, backend):
    seen = []

    def handler():
        try:
            with scope.transaction():
                write()
                raise ValueError
        except ValueError:
            pass
        seen.append(User.get(1).fullname)
        return "ok"

    make_app({"/": handler}, scope).request("/")
    assert seen == ["Full 1"]


@pytest.mark.parametrize("options", [{"readonly": True}, {"isolation": "SERIALIZABLE"}],
                         ids=["readonly", "isolation"])
def test_nested_block_with_options_the_request_lacks_is_refused(scope, backend, options):
    def handler():
        with scope.transaction(**options):
            write()
        return "ok"

    assert make_app({"/": handler}, scope).request("/").status.startswith("500")
    assert untouched(backend)


def test_nested_block_with_the_same_options_joins(scope, backend):
    def handler():
        with scope.transaction(readonly=False):
            write()
        return "ok"

    assert make_app({"/": handler}, scope).request("/").status == "200 OK"
    assert written(backend)


# -- 4. a handler that forks -------------------------------------------------------------------


def test_forked_child_never_uses_the_parents_transaction(scope, backend):
    read, write_end = os.pipe()

    def handler():
        User.get(1).fullname  # noqa: B018 - the request's transaction has a connection when it forks
        pid = os.fork()
        if pid == 0:  # the child: its own scope, its own connection, its own commit
            code = 1
            try:
                assert current_scope() is None
                assert not hasattr(sqlhub.threadingLocal, "connection")
                with scope.transaction():
                    write("child", user_id=2)
                code = 0
            finally:
                os.write(write_end, bytes([code]))
                os._exit(code)
        os.waitpid(pid, 0)
        write("parent")  # after the child: SQLite lets one writer at a time
        raise web.internalerror()  # the parent rolls back

    make_app({"/": handler}, scope).request("/")
    assert os.read(read, 1) == b"\x00", "the child could not open a scope of its own"
    os.close(read)
    os.close(write_end)
    assert untouched(backend), "the parent's rollback"
    assert written(backend, 2, "child"), "the child's own transaction committed, not lost with the parent's"


# -- 6 and 13. a streamed body whose COMMIT fails never ends like a success --------------------


def test_streamed_body_whose_commit_fails_loses_its_last_chunk_and_raises(scope, backend, make_commit_fail):
    def handler():
        write()
        yield "first "
        make_commit_fail()
        yield "last"

    started, body = serve(make_app({"/": handler}, scope))
    delivered = []
    with pytest.raises(CommitFailed):
        for chunk in body:
            delivered.append(chunk)
    assert b"last" not in b"".join(delivered)
    assert untouched(backend)
    assert open_scopes() == 0


def test_streamed_body_that_never_touched_the_database_is_not_held_back(scope):
    produced = []

    def handler():
        for n in range(3):
            produced.append(n)
            yield str(n)

    started, body = serve(make_app({"/": handler}, scope))
    chunks = iter(body)
    assert next(chunks) == b"0"
    assert produced == [0], "a chunk is delivered as soon as it is produced"
    assert b"".join(chunks) == b"12"


# -- 7, 19, 20. a client that leaves mid-stream ------------------------------------------------


def _drop_after_first_chunk(app):
    started, body = serve(app)
    next(iter(body))
    gc.disable()  # a transaction left open must not hide behind a lucky collection
    try:
        getattr(body, "close", lambda: None)()  # web.py's body has none: the server just drops it
        del body
        return open_scopes()
    finally:
        gc.enable()


def test_dropped_stream_returns_its_connection_to_the_pool_and_runs_finally_inside_the_scope(scope, backend):
    inside = []

    def handler():
        try:
            write()
            yield "first"
            yield "second"
        finally:
            inside.append(current_scope() is not None)

    pool = scope.connection._pool if backend.kind != "sqlite" else None
    assert _drop_after_first_chunk(make_app({"/": handler}, scope)) == 0
    assert inside == [True]
    assert untouched(backend)
    assert idle_in_transaction(backend) == 0
    if pool is not None:
        assert len(pool) == 1, "a healthy connection goes back to the pool"


def test_dropped_stream_after_a_caught_database_error_ends_its_scope(scope, backend):
    def handler():
        write()
        try:
            sqlhub.getConnection().query("SELECT * FROM no_such_table")
        except Exception:
            pass
        yield "first"
        yield "second"

    assert _drop_after_first_chunk(make_app({"/": handler}, scope)) == 0
    assert idle_in_transaction(backend) == 0
    assert untouched(backend)


def test_dropped_stream_after_a_retry_ends_its_scope(scope, backend, monkeypatch):
    from test_retry import _raise_serialization_failure

    # As in production: web.py's debug page (python app.py) keeps the frames of
    # the failed attempt, this processor's among them, in a reference cycle.
    monkeypatch.setattr(web.config, "debug", False)

    attempts = []

    def handler():
        attempts.append(1)
        if len(attempts) == 1:
            _raise_serialization_failure(backend)
        return stream()

    def stream():
        write()
        yield "first"
        yield "second"

    app = make_app({"/": handler}, txscope(backend.uri, attempts=2, retry_backoff=0))
    assert _drop_after_first_chunk(app) == 0
    assert len(attempts) == 2
    assert idle_in_transaction(backend) == 0


# -- 8. an exception always rolls back, whatever X-Tm says -----------------------------------------


def test_crash_rolls_back_even_with_x_tm_commit(scope, backend):
    def handler():
        web.header("X-Tm", "commit")
        write()
        raise ValueError("crash")

    assert make_app({"/": handler}, scope).request("/").status.startswith("500")
    assert untouched(backend)


def test_returned_answer_with_x_tm_commit_still_commits(scope, backend):
    def handler():
        web.header("X-Tm", "commit")
        web.ctx.status = "500 Internal Server Error"
        write()
        return "an answer, not a crash"

    make_app({"/": handler}, scope).request("/")
    assert written(backend)


def test_middleware_crash_rolls_back_even_with_x_tm_commit(scope, backend):
    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain"), ("X-Tm", "commit")])
        write()
        raise ValueError("crash")

    environ = {}
    setup_testing_defaults(environ)
    with pytest.raises(ValueError):
        TxScopeMiddleware(app, backend.uri)(environ, lambda *a: None)
    assert untouched(backend)


# -- 10. SQLite REPEATABLE READ with concurrent writers ---------------------------------------------


def test_sqlite_repeatable_read_writers_queue_instead_of_failing(tmp_path):
    from models import create_tables

    uri = "sqlite:" + str(tmp_path / "rr.db")
    scope = txscope(uri, isolation="REPEATABLE READ", attempts=1)
    create_tables(scope.connection)
    scope.connection.query("INSERT INTO users (id, name, fullname, password) VALUES (1, 'u', '0', 'x')")
    failures = []

    def increment():
        for _ in range(20):
            try:
                with scope.transaction():
                    user = User.get(1)
                    user.fullname = str(int(user.fullname) + 1)
            except Exception as e:  # noqa: PERF203 - the failure is what the test counts
                failures.append(e)

    threads = [threading.Thread(target=increment) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    value = sqlite3.connect(str(tmp_path / "rr.db")).execute("SELECT fullname FROM users").fetchone()[0]
    assert failures == [] and value == "60", "every read-modify-write ran, none was lost"


def test_sqlite_lock_timeout_at_begin_immediate_is_retried(tmp_path):
    from sqlobject.sqlite.sqliteconnection import SQLiteConnection

    from webpy_txscope import scope_options

    path = str(tmp_path / "locked.db")
    other = sqlite3.connect(path, isolation_level=None, timeout=0)
    other.execute("CREATE TABLE t (v INTEGER)")
    calls = []

    class Page:
        @scope_options(isolation="SERIALIZABLE")
        def GET(self):
            calls.append(1)
            if len(calls) == 1:
                other.execute("BEGIN IMMEDIATE")  # another writer holds the lock past the busy timeout
            try:
                sqlhub.threadConnection.query("INSERT INTO t VALUES (1)")
            finally:
                if other.in_transaction:
                    other.execute("ROLLBACK")
            return "ok"

    app = web.application(("/", "Page"), {"Page": Page})
    app.add_processor(txscope(SQLiteConnection(path, timeout=0.05), attempts=2, retry_backoff=0))
    assert app.request("/").status == "200 OK"
    assert len(calls) == 2 and other.execute("SELECT COUNT(*) FROM t").fetchone() == (1,)


# -- 12. hooks ------------------------------------------------------------------------------------


def test_hook_that_registers_a_hook_and_a_hook_that_raises_drop_no_other_hook(scope, backend):
    ran = []

    def first():
        ran.append("first")
        on_commit(ran.append, "registered by a hook")
        raise RuntimeError("a failing hook")

    def handler():
        write()
        on_commit(first)
        on_commit(ran.append, "second")
        return "ok"

    assert make_app({"/": handler}, scope).request("/").status == "200 OK"
    assert ran == ["first", "second", "registered by a hook"]


# -- 14. a commit veto that raises never acknowledges --------------------------------------------


def test_middleware_veto_that_raises_answers_500(scope, backend):
    def veto(status, headers):
        raise RuntimeError("broken veto")

    def app(environ, start_response):
        write()
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"all done"]

    environ = {}
    setup_testing_defaults(environ)
    started = []
    body = TxScopeMiddleware(app, backend.uri, commit_veto=veto)(
        environ, lambda status, headers, exc_info=None: started.append(status))
    assert started[-1].startswith("500") and b"all done" not in b"".join(body)
    assert untouched(backend)


@pytest.mark.parametrize("options", [
    {"retry_backoff": float("nan")}, {"retry_backoff": float("inf")}, {"retry_after": -7},
    {"max_age": float("nan")}, {"commit_veto": os.getcwd},
], ids=["backoff-nan", "backoff-inf", "retry-after-negative", "max-age-nan", "veto-signature"])
def test_unusable_options_fail_at_creation(options):
    from webpy_txscope import ConfigurationError

    with pytest.raises(ConfigurationError):
        txscope("sqlite:/:memory:", **options)


# -- 15. the server refuses a header: nothing was kept ----------------------------------------------


def test_header_the_server_refuses_rolls_back(scope, backend):
    def app(environ, start_response):
        write()
        start_response("303 See Other", [("Content-Type", "text/plain"), ("Location", "/x\r\nEvil: 1")])
        return [b"moved"]

    def strict_server(status, headers, exc_info=None):
        if any("\r" in value or "\n" in value for _, value in headers):
            raise ValueError("header with CR/LF")
        return lambda data: None

    environ = {}
    setup_testing_defaults(environ)
    with pytest.raises(ValueError):
        TxScopeMiddleware(app, backend.uri)(environ, strict_server)
    assert untouched(backend), "a write must not be kept when its answer cannot be sent"


def test_list_body_with_close_is_closed_inside_the_scope_before_commit(scope, backend):
    class Body(list):
        def close(self):
            write()

    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        return Body([b"ok"])

    environ = {}
    setup_testing_defaults(environ)
    assert list(TxScopeMiddleware(app, backend.uri)(environ, lambda *a: None)) == [b"ok"]
    assert written(backend)


# -- 16. wsgi.file_wrapper bodies reach the server as they are ----------------------------------


def test_file_wrapper_body_is_not_wrapped(scope, backend):
    from wsgiref.util import FileWrapper

    wrapper = FileWrapper(io.BytesIO(b"file"))

    def app(environ, start_response):
        write()
        start_response("200 OK", [("Content-Type", "text/plain")])
        return wrapper

    environ = {"wsgi.file_wrapper": FileWrapper}
    setup_testing_defaults(environ)
    assert TxScopeMiddleware(app, backend.uri)(environ, lambda *a: None) is wrapper
    assert written(backend)
    assert open_scopes() == 0


# -- 21. doom + X-Tm: commit + a serialization failure is retried like without doom --------------


def test_doomed_request_with_a_transient_failure_is_retried(scope, backend):
    from test_retry import _raise_serialization_failure

    attempts = []

    def handler():
        attempts.append(1)
        web.header("X-Tm", "commit")
        if len(attempts) == 1:
            doom()
            _raise_serialization_failure(backend)
        write()
        return "ok"

    app = make_app({"/": handler}, txscope(backend.uri, attempts=2, retry_backoff=0))
    assert app.request("/").status == "200 OK"
    assert len(attempts) == 2 and written(backend)


# -- the untouched shortcut, pinned ---------------------------------------------------------------


def test_request_without_the_database_counts_as_untouched_and_reuses_its_scope(scope):
    app = make_app({"/": lambda: "free"}, scope)
    before = stats()
    seen = []
    app2 = make_app({"/": lambda: (seen.append(current_scope()), "free")[1]}, scope)
    app2.request("/")
    app2.request("/")
    after = stats()
    assert after["untouched"] - before["untouched"] == 2
    assert after["commits"] == before["commits"] and after["rollbacks"] == before["rollbacks"]
    assert seen[0] is seen[1], "the thread's untouched scope is reused"
    app.request("/")


def test_scope_with_its_own_settings_is_not_reused(scope):
    from webpy_txscope import scope_options

    seen = []

    class Page:
        @scope_options(readonly=True)
        def GET(self):
            seen.append(current_scope())
            return "ro"

    app = web.application(("/", "Page"), {"Page": Page})
    app.add_processor(scope)
    app.request("/")
    app.request("/")
    assert seen[0] is not seen[1]


def test_open_leaves_exactly_the_thread_state_bind_does(scope):
    manager = scope.manager
    local = sqlhub.threadingLocal.__dict__
    sentinel = object()
    local["connection"] = sentinel
    try:
        opened = manager.open()
        by_open = (dict(local), current_scope())
        opened.unbind()
        assert local["connection"] is sentinel
        bound = Scope(manager)
        bound.bind()
        by_bind = (dict(local), current_scope())
        bound.unbind()
        opened.bind()
        manager.finish(opened)
        assert by_open[1] is opened and by_bind[1] is bound
        assert by_open[0].keys() == by_bind[0].keys()
        assert by_open[0]["connection"] is opened.tx and by_bind[0]["connection"] is bound.tx
        assert local["connection"] is sentinel and current_scope() is None
    finally:
        local.pop("connection", None)


def test_any_use_of_the_transaction_makes_it_touched(scope):
    with scope.transaction() as s:
        assert not s.tx.touched
        s.tx.cache  # noqa: B018 - the transaction-local cache: instances live there
        assert s.tx.touched
