"""Controls beyond the recipe: isolation, read-only, hooks, veto, doom, opt-out, logging, counters."""

import logging

import pytest
import web
from sqlobject import sqlhub

from models import User
from webpy_txscope import (
    doom, no_scope, on_commit, open_scopes, scope_options, stats, strict_commit_veto, txscope,
)
from webapps import make_app


def write(value="written", user_id=1):
    User.get(user_id).fullname = value


def raw_fullname(user_id=1):
    """Read through the current transaction, bypassing SQLObject's caches."""
    return sqlhub.getConnection().queryOne("SELECT fullname FROM users WHERE id = %d" % user_id)[0]


# -- isolation and read-only ------------------------------------------------------------


def _outside_update(backend):
    """Another session commits a change; MariaDB's gives up on a lock after one second."""
    conn = backend.outside()
    try:
        cur = conn.cursor()
        if backend.kind == "mysql":
            cur.execute("SET SESSION innodb_lock_wait_timeout = 1")
        cur.execute("UPDATE users SET fullname = 'outside' WHERE id = 1")
    finally:
        conn.close()


def _reread_after_outside_change(backend, scope):
    """Read, let another session commit a change, read again: what does the request see?"""
    seen = []

    def handler():
        seen.append(raw_fullname())
        try:
            _outside_update(backend)
        except Exception as e:
            assert "Lock wait timeout" in str(e)
            seen.append("locked")
        else:
            seen.append(raw_fullname())
        return "ok"

    assert make_app({"/": handler}, scope).request("/").status == "200 OK"
    return seen


@pytest.mark.parametrize("isolation, second_read", [
    ("READ COMMITTED", "outside"),
    ("REPEATABLE READ", "Full 1"),
    ("SERIALIZABLE", "Full 1"),
])
def test_isolation_level_applies_to_the_request(server_scope, server_backend, isolation, second_read):
    if server_backend.kind == "mysql" and isolation == "SERIALIZABLE":
        second_read = "locked"  # MariaDB's SERIALIZABLE reads take shared locks instead
    seen = _reread_after_outside_change(server_backend, txscope(server_backend.uri, isolation=isolation))
    assert seen == ["Full 1", second_read]


def test_isolation_is_not_left_on_the_pooled_connection(server_scope, server_backend):
    default = "Full 1" if server_backend.kind == "mysql" else "outside"  # MariaDB: REPEATABLE READ
    other = "READ COMMITTED" if server_backend.kind == "mysql" else "REPEATABLE READ"
    _reread_after_outside_change(server_backend, txscope(server_backend.uri, isolation=other))
    server_backend.sql("UPDATE users SET fullname = 'Full 1' WHERE id = 1")
    assert len(server_scope.connection._pool) == 1  # the next request reuses that connection
    assert _reread_after_outside_change(server_backend, server_scope) == ["Full 1", default]


def test_per_handler_isolation(server_scope, server_backend):
    seen = []

    class handler:
        @scope_options(isolation="REPEATABLE READ")
        def GET(self):
            seen.append(raw_fullname())
            _outside_update(server_backend)
            seen.append(raw_fullname())
            return "ok"

    app = web.application(("/", "handler"), {"handler": handler})
    app.add_processor(txscope(server_backend.uri, isolation="READ COMMITTED"))
    app.request("/")
    assert seen == ["Full 1", "Full 1"]


def test_readonly_scope_refuses_writes_and_keeps_nothing(scope, backend):
    app = make_app({"/": lambda: (write(), "ok")[1]}, txscope(backend.uri, readonly=True))
    assert app.request("/").status.startswith("500")
    assert backend.fullname(1) == "Full 1"
    app = make_app({"/": lambda: (write(), "ok")[1]}, scope)
    assert app.request("/").status == "200 OK"  # the pooled connection is writable again
    assert backend.fullname(1) == "written"


def test_readonly_per_handler(scope, backend):
    class handler:
        @scope_options(readonly=True)
        def POST(self):
            write()
            return "ok"

    app = web.application(("/", "handler"), {"handler": handler})
    app.add_processor(scope)
    assert app.request("/", method="POST").status.startswith("500")
    assert backend.fullname(1) == "Full 1"


def test_options_after_the_first_statement_are_refused(scope):
    class handler:
        def GET(self):
            User.get(1).fullname
            return scope_options(readonly=True)(lambda: "late")()

    app = web.application(("/", "handler"), {"handler": handler})
    app.add_processor(scope)
    assert app.request("/").status.startswith("500")


def test_unknown_isolation_in_decorator_is_refused():
    from webpy_txscope import ConfigurationError

    with pytest.raises(ConfigurationError, match="unknown isolation level"):
        scope_options(isolation="CHAOS")


# -- after-commit hooks ----------------------------------------------------------------------


def test_on_commit_runs_after_commit_and_sees_the_data(scope, backend):
    ran = []

    def handler():
        write()
        on_commit(lambda: ran.append(backend.fullname(1)))
        assert ran == []
        return "ok"

    make_app({"/": handler}, scope).request("/")
    assert ran == ["written"]


@pytest.mark.parametrize("ending", ["crash", "500", "doom"])
def test_on_commit_never_runs_after_rollback(scope, ending):
    ran = []

    def handler():
        write()
        on_commit(ran.append, "hook")
        if ending == "crash":
            raise ValueError
        if ending == "500":
            raise web.internalerror()
        doom()
        return "ok"

    make_app({"/": handler}, scope).request("/")
    assert ran == []


def test_hook_that_raises_is_logged_and_changes_nothing(scope, backend, caplog):
    ran = []

    def handler():
        write()
        on_commit(lambda: 1 / 0)
        on_commit(ran.append, "second")
        return "ok"

    response = make_app({"/": handler}, scope).request("/")
    assert response.status == "200 OK" and response.data == b"ok"
    assert backend.fullname(1) == "written"
    assert ran == ["second"]
    assert any("after-commit hook" in r.getMessage() and r.exc_info for r in caplog.records)


def test_on_commit_in_a_transaction_block(scope):
    ran = []
    with scope.transaction():
        on_commit(ran.append, 1)
    assert ran == [1]


def test_on_commit_outside_a_scope_is_an_error():
    with pytest.raises(RuntimeError, match="needs an active scope"):
        on_commit(print)
    with pytest.raises(RuntimeError, match="needs an active scope"):
        doom()


def test_on_commit_needs_a_callable(scope):
    with scope.transaction():
        with pytest.raises(TypeError):
            on_commit("not callable")


# -- commit veto and doom ----------------------------------------------------------------------


def test_doom_rolls_back_but_keeps_the_response(scope, backend):
    def handler():
        write()
        doom()
        return "looks fine"

    response = make_app({"/": handler}, scope).request("/")
    assert (response.status, response.data) == ("200 OK", b"looks fine")
    assert backend.fullname(1) == "Full 1"


@pytest.mark.parametrize("answer, kept", [
    (lambda: web.seeother("/"), True),
    (lambda: web.notfound(), False),
    (lambda: web.badrequest(), False),
], ids=["303-commits", "404-rolls-back", "400-rolls-back"])
def test_strict_veto_rolls_back_4xx(scope, backend, answer, kept):
    def handler():
        write()
        raise answer()

    make_app({"/": handler}, txscope(backend.uri, commit_veto=strict_commit_veto)).request("/")
    assert (backend.fullname(1) == "written") is kept


def test_custom_veto_gets_status_and_headers(scope, backend):
    calls = []

    def veto(status, headers):
        calls.append((status, dict(headers)))
        return dict(headers).get("X-Dry-Run") == "1"

    def handler():
        write()
        web.header("X-Dry-Run", "1")
        return "ok"

    make_app({"/": handler}, txscope(backend.uri, commit_veto=veto)).request("/")
    assert calls == [("200 OK", {"Content-Type": "text/plain", "X-Dry-Run": "1"})]
    assert backend.fullname(1) == "Full 1"


def test_x_tm_header_overrides_the_status(scope, backend):
    def handler():
        write()
        web.header("X-Tm", "abort")
        return "ok"

    make_app({"/": handler}, scope).request("/")
    assert backend.fullname(1) == "Full 1"


def test_veto_that_raises_rolls_back_answers_500_and_is_logged(scope, backend, caplog):
    def veto(status, headers):
        raise RuntimeError("broken veto")

    response = make_app({"/": lambda: (write(), "ok")[1]}, txscope(backend.uri, commit_veto=veto)).request("/")
    assert response.status.startswith("500"), "a write that did not stick must never be acknowledged"
    assert backend.fullname(1) == "Full 1"
    assert any("commit veto" in r.getMessage() for r in caplog.records)


# -- opting out and lazy begin ---------------------------------------------------------------------


def test_no_scope_handler_runs_outside_the_transaction(scope):
    seen = {}

    class handler:
        @no_scope
        def GET(self):
            seen["thread_conn"] = hasattr(sqlhub.threadingLocal, "connection")
            return "ok"

    app = web.application(("/", "handler"), {"handler": handler})
    app.add_processor(scope)
    calls = []
    real = scope.connection.getConnection
    scope.connection.getConnection = lambda: calls.append(1) or real()
    try:
        assert app.request("/").status == "200 OK"
    finally:
        del scope.connection.getConnection
    assert seen == {"thread_conn": False}
    assert calls == []


@pytest.fixture(params=["postgres-psycopg", "postgres-psycopg2"])
def postgres_scope(request, _databases):
    from conftest import BACKENDS, Backend, _fresh_scope

    backend = Backend(request.param, BACKENDS[request.param])
    for scope in _fresh_scope(backend):
        yield backend, scope


def test_db_free_request_sends_nothing_to_the_server(postgres_scope):
    # The server is the witness: every backend of the test database changes
    # its state_change timestamp on every statement it receives.
    backend, scope = postgres_scope

    def sessions():
        return set(backend.sql("SELECT pid, state_change FROM pg_stat_activity "
                               "WHERE datname = current_database() AND pid <> pg_backend_pid()"))

    app = make_app({"/db": lambda: User.get(1).fullname, "/free": lambda: "no database"}, scope)
    app.request("/db")  # the pool now holds a connection the next requests could use
    before = sessions()
    for _ in range(20):
        app.request("/free")
    assert before and sessions() == before
    app.request("/db")
    assert sessions() != before  # the witness does see a request that uses the database


# -- logging and counters ------------------------------------------------------------------


def test_logging_says_what_happened_and_why(scope, caplog):
    caplog.set_level(logging.DEBUG, logger="webpy_txscope")
    app = make_app({"/ok": lambda: (write(), "ok")[1], "/crash": lambda: (write(), 1 / 0)}, scope)
    app.request("/ok")
    app.request("/crash")
    messages = [r.getMessage() for r in caplog.records if r.name == "webpy_txscope"]
    assert any(m.startswith("begin on") for m in messages)
    assert any(m.startswith("commit on") and "200 OK" in m and " ms" in m for m in messages)
    assert any(m.startswith("rollback on") and "500" in m for m in messages)


def test_counters_count_commits_and_rollbacks(scope):
    app = make_app({"/ok": lambda: (write(), "ok")[1], "/crash": lambda: (write(), 1 / 0)}, scope)
    before = stats()
    app.request("/ok")
    app.request("/crash")
    app.request("/ok")
    after = stats()
    assert after["commits"] - before["commits"] == 2
    assert after["rollbacks"] - before["rollbacks"] == 1
    assert after["open_scopes"] == open_scopes() == 0
