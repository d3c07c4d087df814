"""The processor's rules, each on SQLite, PostgreSQL and MariaDB with every driver."""

import gc
import threading

import pytest
import web
from sqlobject import sqlhub

from models import User
from webpy_txscope import open_scopes, stats, txscope
from webapps import make_app, paste_app


def write(value="written", user_id=1):
    User.get(user_id).fullname = value


def written(backend):
    return backend.fullname(1) == "written"


# -- how a request ends decides commit or rollback ------------------------------


def test_normal_return_commits(scope, backend):
    app = make_app({"/": lambda: (write(), "ok")[1]}, scope)
    assert app.request("/").status == "200 OK"
    assert written(backend)


@pytest.mark.parametrize("answer", [
    lambda: web.seeother("/elsewhere"),
    lambda: web.redirect("/elsewhere"),
    lambda: web.notmodified(),
    lambda: web.notfound(),
    lambda: web.badrequest(),
    lambda: web.forbidden(),
], ids=["303", "301", "304", "404", "400", "403"])
def test_control_flow_http_errors_below_500_commit(scope, backend, answer):
    def handler():
        write()
        raise answer()

    response = make_app({"/": handler}, scope).request("/")
    assert int(response.status[:3]) < 500
    assert written(backend)


def test_crash_after_write_rolls_back(scope, backend):
    def handler():
        write()
        raise ValueError("boom")

    assert make_app({"/": handler}, scope).request("/").status.startswith("500")
    assert backend.fullname(1) == "Full 1"


@pytest.mark.parametrize("failure", [
    lambda: web.internalerror(),
    lambda: web.HTTPError("503 Service Unavailable", {}, "later"),
    lambda: web.HTTPError("502 Bad Gateway", {}, "upstream"),
], ids=["internalerror", "503", "502"])
def test_5xx_http_errors_roll_back(scope, backend, failure):
    def handler():
        write()
        raise failure()

    assert make_app({"/": handler}, scope).request("/").status.startswith("5")
    assert backend.fullname(1) == "Full 1"


def test_5xx_status_set_by_a_returning_handler_rolls_back(scope, backend):
    def handler():
        write()
        web.ctx.status = "500 Internal Server Error"
        return "failed"

    make_app({"/": handler}, scope).request("/")
    assert backend.fullname(1) == "Full 1"


@pytest.mark.parametrize("exc", [KeyboardInterrupt, SystemExit])
def test_interrupts_roll_back_and_propagate(scope, backend, exc):
    def handler():
        write()
        raise exc()

    with pytest.raises(exc):
        make_app({"/": handler}, scope).request("/")
    assert backend.fullname(1) == "Full 1"
    assert open_scopes() == 0


# -- a failed COMMIT answers 500 and keeps nothing ---------------------------------


@pytest.mark.parametrize("ending", ["return", "redirect"])
def test_failed_commit_answers_500_and_keeps_nothing(scope, backend, make_commit_fail, ending):
    def handler():
        write()
        make_commit_fail()
        if ending == "redirect":
            raise web.seeother("/done")
        return "claims success"

    response = paste_app(make_app({"/": handler}, scope)).get("/", status=500, expect_errors=True)
    assert "Location" not in dict(response.headers)
    assert backend.fullname(1) == "Full 1"
    assert stats()["open_scopes"] == 0


# -- the thread is left exactly as it was ----------------------------------------------


PATHS = {
    "return": lambda: "ok",
    "crash": lambda: 1 / 0,
    "redirect": lambda: (_ for _ in ()).throw(web.seeother("/x")),
    "404": lambda: (_ for _ in ()).throw(web.notfound()),
}


@pytest.mark.parametrize("path", sorted(PATHS))
def test_thread_connection_restored_when_there_was_one(scope, path):
    before = scope.connection
    sqlhub.threadConnection = before
    make_app({"/": lambda: (write(), PATHS[path]())[1]}, scope).request("/")
    assert sqlhub.threadConnection is before


@pytest.mark.parametrize("path", sorted(PATHS))
def test_thread_connection_deleted_when_there_was_none(scope, path):
    make_app({"/": lambda: (write(), PATHS[path]())[1]}, scope).request("/")
    assert not hasattr(sqlhub.threadingLocal, "connection")


def test_thread_connection_restored_after_interrupt(scope):
    def handler():
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        make_app({"/": handler}, scope).request("/")
    assert not hasattr(sqlhub.threadingLocal, "connection")


def test_handler_sees_the_scope_transaction(scope):
    seen = {}

    def handler():
        seen["conn"] = sqlhub.threadConnection
        return "ok"

    make_app({"/": handler}, scope).request("/")
    assert seen["conn"] is not scope.connection
    assert seen["conn"]._dbConnection is scope.connection


# -- connections go back to the pool, no session left in a transaction ------------------


def open_transactions(backend):
    """Sessions of the test database that sit inside a transaction right now."""
    if backend.kind == "postgres":
        return backend.sql("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                           "AND state LIKE 'idle in transaction%%'")[0][0]
    if backend.kind == "mysql":
        return backend.sql("SELECT count(*) FROM information_schema.innodb_trx t "
                           "JOIN information_schema.processlist p ON p.id = t.trx_mysql_thread_id "
                           "WHERE p.db = DATABASE() AND p.id <> CONNECTION_ID()")[0][0]
    return int(any(c.in_transaction for c in scope_connections(backend)))


def scope_connections(backend):
    from sqlobject import connectionForURI

    conn = connectionForURI(backend.uri)
    return list(conn._pool) + list(getattr(conn, "_threadPool", {}).values())


def test_every_path_returns_the_connection_clean(scope, backend):
    app = make_app({"/(.*)": lambda p: (write(p), PATHS[p]())[1]}, scope)
    for _ in range(3):
        for path in sorted(PATHS):
            app.request("/" + path)
    gc.collect()
    assert open_scopes() == 0
    assert open_transactions(backend) == 0
    if backend.kind != "sqlite":
        assert len(scope.connection._pool) == 1  # one thread: its connection is reused, none leaks


def test_request_that_never_touches_the_database_checks_out_nothing(scope, backend):
    pool_before = list(scope.connection._pool)
    calls = []
    real = scope.connection.getConnection
    scope.connection.getConnection = lambda: calls.append(1) or real()
    try:
        response = make_app({"/": lambda: "no database here"}, scope).request("/")
    finally:
        del scope.connection.getConnection
    assert response.status == "200 OK"
    assert calls == []
    assert list(scope.connection._pool) == pool_before


# -- streaming bodies ------------------------------------------------------------------------


def test_streaming_body_commits_when_exhausted(scope, backend):
    def handler():
        yield "first "
        write()
        yield "second"

    response = paste_app(make_app({"/": handler}, scope)).get("/")
    assert response.body == b"first second"
    assert written(backend)
    assert open_scopes() == 0
    assert not hasattr(sqlhub.threadingLocal, "connection")


def test_streaming_body_that_raises_rolls_back(scope, backend):
    def handler():
        yield "first "
        write()
        raise ValueError("mid-stream")

    wsgi = make_app({"/": handler}, scope).wsgifunc()
    body = wsgi(_environ(), lambda status, headers: None)
    with pytest.raises(ValueError):
        list(body)
    assert backend.fullname(1) == "Full 1"
    assert open_scopes() == 0
    assert not hasattr(sqlhub.threadingLocal, "connection")


def test_streaming_body_closed_early_rolls_back(scope, backend):
    def handler():
        write()
        yield "first "
        yield "never sent"

    wsgi = make_app({"/": handler}, scope).wsgifunc()
    body = wsgi(_environ(), lambda status, headers: None)
    assert next(iter(body)) == b"first "
    del body
    gc.collect()
    assert backend.fullname(1) == "Full 1"
    assert open_scopes() == 0
    assert not hasattr(sqlhub.threadingLocal, "connection")


def test_streaming_body_runs_in_its_transaction(scope):
    seen = []

    def handler():
        seen.append(sqlhub.threadConnection)
        yield "a"
        seen.append(sqlhub.threadConnection)
        yield "b"

    paste_app(make_app({"/": handler}, scope)).get("/")
    assert seen[0] is seen[1] and seen[0]._dbConnection is scope.connection


def _environ(path="/"):
    return {"REQUEST_METHOD": "GET", "PATH_INFO": path, "SERVER_NAME": "localhost", "SERVER_PORT": "80",
            "wsgi.url_scheme": "http", "SCRIPT_NAME": "", "QUERY_STRING": ""}


# -- one scope per request, however often it is added ------------------------------------------


def test_processor_added_twice_joins_one_transaction(scope, backend):
    seen = []

    def handler():
        seen.append(sqlhub.threadConnection)
        write()
        raise ValueError("crash")

    app = make_app({"/": handler}, scope, scope)
    outer = []
    app.processors.insert(app.processors.index(scope) + 1, lambda h: (outer.append(sqlhub.threadConnection), h())[1])
    app.request("/")
    assert seen[0] is outer[0]
    assert backend.fullname(1) == "Full 1"
    assert stats()["open_scopes"] == 0


def test_sub_application_joins_the_parent_scope(scope, backend):
    seen = []
    sub = make_app({"/": lambda: (seen.append(sqlhub.threadConnection), write(), "sub")[2]}, scope)
    parent = web.application(("/sub", sub), {})
    parent.add_processor(scope)
    assert parent.request("/sub/").data == b"sub"
    assert written(backend)
    assert len(seen) == 1


# -- outside a request: the process connection -------------------------------------------------


def test_call_without_handler_binds_the_process_connection(scope):
    scope()
    assert sqlhub.processConnection is scope.connection
    assert User.get(2).fullname == "Full 2"


def test_interactive_fallback_in_a_fresh_thread(scope):
    result = {}

    def repl():
        scope()
        result["names"] = [u.name for u in User.select(orderBy="id")]
        result["thread_conn"] = hasattr(sqlhub.threadingLocal, "connection")

    t = threading.Thread(target=repl)
    t.start()
    t.join(30)
    assert result == {"names": ["user1", "user2", "user3"], "thread_conn": False}


def test_transaction_block_commits(scope, backend):
    with scope.transaction():
        write()
    assert written(backend)
    assert not hasattr(sqlhub.threadingLocal, "connection")


def test_transaction_block_rolls_back_on_error(scope, backend):
    with pytest.raises(ZeroDivisionError):
        with scope.transaction():
            write()
            1 / 0
    assert backend.fullname(1) == "Full 1"
    assert not hasattr(sqlhub.threadingLocal, "connection")


def test_nested_transaction_block_joins(scope, backend):
    with pytest.raises(ZeroDivisionError):
        with scope.transaction() as outer:
            with scope.transaction() as inner:
                write()
            assert inner is outer
            1 / 0
    assert backend.fullname(1) == "Full 1"


def test_one_connection_per_process(backend):
    assert txscope(backend.uri).connection is txscope(backend.uri).connection


def test_swallowed_statement_error_never_claims_success(scope, backend):
    from sqlobject.dberrors import DuplicateEntryError

    def handler():
        write()
        try:
            User(name="user2", fullname="duplicate", password="x")
        except DuplicateEntryError:
            pass  # PostgreSQL has aborted the transaction; MariaDB and SQLite carry on
        return "ok"

    response = paste_app(make_app({"/": handler}, scope)).get("/", expect_errors=True)
    kept = written(backend)
    assert (response.status == 200) is kept
    assert kept is (backend.kind != "postgres")
