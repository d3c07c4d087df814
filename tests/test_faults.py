"""Connections that die: nothing half-written, nothing dead left in the pool, the next request works."""

import logging

from sqlobject import sqlhub

from models import User
from webpy_txscope import open_scopes, txscope
from webapps import make_app, paste_app


def session_id():
    """The server's id for the connection this request runs on."""
    conn = sqlhub.getConnection()
    if conn._dbConnection.dbName == "postgres":
        return conn.queryOne("SELECT pg_backend_pid()")[0]
    return conn.queryOne("SELECT CONNECTION_ID()")[0]


def kill(backend, sid):
    if backend.kind == "postgres":
        backend.sql("SELECT pg_terminate_backend(%d)" % sid)
    else:
        backend.sql("KILL %d" % sid)


def kill_all_app_sessions(backend):
    """What a server restart does to every pooled connection of the app."""
    if backend.kind == "postgres":
        backend.sql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()")
        return
    for (sid,) in backend.sql("SELECT id FROM information_schema.processlist "
                              "WHERE db = DATABASE() AND id <> CONNECTION_ID()"):
        backend.sql("KILL %d" % sid)


def test_connections_killed_while_idle_do_not_fail_the_next_request(server_scope, server_backend):
    used = []

    def handler():
        fullname = User.get(1).fullname
        used.append(sqlhub.threadConnection._raw)
        return fullname

    app = make_app({"/": handler}, server_scope)
    assert app.request("/").status == "200 OK"
    assert server_scope.connection._pool == [used[0]]
    kill_all_app_sessions(server_backend)
    response = app.request("/")
    assert (response.status, response.data) == ("200 OK", b"Full 1")
    assert server_scope.connection._pool == [used[1]]  # the dead one was dropped, the new one pooled
    assert used[1] is not used[0]


def test_connection_killed_mid_transaction_leaves_nothing(server_scope, server_backend):
    def handler():
        User.get(1).fullname = "first half"
        kill(server_backend, session_id())
        User.get(2).fullname = "second half"  # must not run on a silently reconnected session
        return "claims success"

    response = paste_app(make_app({"/": handler}, server_scope)).get("/", expect_errors=True)
    assert response.status in (500, 503)
    assert server_backend.fullname(1) == "Full 1"
    assert server_backend.fullname(2) == "Full 2"
    assert open_scopes() == 0
    assert not hasattr(sqlhub.threadingLocal, "connection")
    app = make_app({"/": lambda: (User.get(3).__setattr__("fullname", "after"), "ok")[1]}, server_scope)
    assert app.request("/").status == "200 OK"
    assert server_backend.fullname(3) == "after"


def test_unreachable_database_answers_503_with_retry_after(caplog, no_thread_connection):
    scope = txscope("postgres://app:s3cretpw@127.0.0.1:1/nowhere?driver=psycopg2", retry_after=7)
    app = make_app({"/": lambda: (User.get(1), "unreachable")[1], "/free": lambda: "no database"}, scope)
    with caplog.at_level(logging.ERROR, logger="webpy_txscope"):
        responses = [paste_app(app).get("/", expect_errors=True) for _ in range(3)]
    assert [r.status for r in responses] == [503, 503, 503]
    assert all(dict(r.headers)["Retry-After"] == "7" for r in responses)
    lines = [r.getMessage() for r in caplog.records if r.name == "webpy_txscope"]
    assert len(lines) == 1 and "unreachable" in lines[0], lines  # one line per outage
    assert "s3cretpw" not in lines[0] and "app:***@" in lines[0]
    assert paste_app(app).get("/free").status == 200  # pages without the database still work
    assert open_scopes() == 0


def test_database_back_after_an_outage_serves_again(scope, backend, caplog):
    from webpy_txscope.core import ScopeManager

    manager = scope.manager
    manager.unavailable(RuntimeError("simulated outage"))
    with caplog.at_level(logging.WARNING, logger="webpy_txscope"):
        response = make_app({"/": lambda: User.get(1).fullname}, scope).request("/")
    assert response.status == "200 OK"
    assert any("reachable again" in r.getMessage() for r in caplog.records)
    assert isinstance(manager, ScopeManager)


def test_forked_child_gets_its_own_connections(scope, backend):
    import os

    app = make_app({"/": lambda: User.get(1).fullname}, scope)
    assert app.request("/").data == b"Full 1"  # the parent's pool holds a connection now
    parent_pool = list(scope.connection._pool) + list(getattr(scope.connection, "_threadPool", {}).values())
    assert parent_pool
    pid = os.fork()
    if pid == 0:  # the child: must not touch the parent's sessions
        code = 1
        try:
            pooled = list(scope.connection._pool) + list(getattr(scope.connection, "_threadPool", {}).values())
            response = app.request("/")
            code = 0 if response.data == b"Full 1" and not pooled else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 0
    assert app.request("/").data == b"Full 1"  # the parent's connection still works
