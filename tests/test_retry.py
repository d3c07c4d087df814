"""Retries on serialization failures and deadlocks: no lost update, nothing retried that must not be."""

import http.client
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import web
from cheroot import wsgi
from sqlobject import IntCol, SQLObject, sqlhub

from webpy_txscope import stats, txscope
from webapps import make_app


class Counter(SQLObject):
    class sqlmeta:
        table = "txscope_counter"

    value = IntCol(default=0)


@pytest.fixture
def counter(backend):
    yield from _counter_table(backend)


@pytest.fixture
def server_counter(server_backend):
    yield from _counter_table(server_backend)


def _counter_table(backend):
    conn = txscope(backend.uri).connection
    Counter.dropTable(ifExists=True, connection=conn)
    Counter.createTable(connection=conn)
    conn.query("INSERT INTO txscope_counter (id, value) VALUES (1, 0)")
    conn.cache.clear()
    yield backend
    sqlhub.threadingLocal.__dict__.pop("connection", None)


def increment():
    """Read, think, write: loses updates unless the transaction is serializable."""
    row = Counter.get(1)
    value = row.value
    time.sleep(0.002)
    row.value = value + 1
    return "ok"


class Server:
    """The app behind a real multi-threaded HTTP server on 127.0.0.1."""

    def __init__(self, app, threads=8):
        self.server = wsgi.Server(("127.0.0.1", 0), app.wsgifunc(), numthreads=threads)
        self.server.prepare()
        self.port = self.server.bind_addr[1]
        self.thread = threading.Thread(target=self.server.serve, daemon=True)
        self.thread.start()

    def post(self, path, body=b""):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            conn.request("POST", path, body=body, headers={"Content-Type": "application/octet-stream"})
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()

    def stop(self):
        self.server.stop()
        self.thread.join(10)


def hammer(scope, clients=8, requests=25):
    """Concurrent increments over HTTP; returns (successes, failures, final counter)."""
    server = Server(make_app({"/incr": increment}, scope))
    try:
        with ThreadPoolExecutor(clients) as pool:
            statuses = list(pool.map(lambda _: server.post("/incr")[0], range(clients * requests)))
    finally:
        server.stop()
    final = scope.connection.queryOne("SELECT value FROM txscope_counter WHERE id = 1")[0]
    return statuses.count(200), len(statuses) - statuses.count(200), final


def test_serializable_increments_without_retries_fail_some_requests(server_counter):
    # SQLite has no such failures: its SERIALIZABLE takes the write lock up front.
    successes, failures, final = hammer(txscope(server_counter.uri, isolation="SERIALIZABLE", attempts=1))
    assert failures > 0, "the load must provoke serialization failures for the retry test to mean anything"
    assert final == successes  # serializable: a failed request lost nothing, nor did a successful one


def test_serializable_increments_with_retries_lose_nothing(counter):
    before = stats()["retries"]
    successes, failures, final = hammer(txscope(counter.uri, isolation="SERIALIZABLE", attempts=20,
                                                retry_backoff=0.005))
    assert failures == 0
    assert final == successes == 200
    if counter.kind != "sqlite":
        assert stats()["retries"] > before


def test_request_body_is_readable_again_on_each_attempt(counter):
    bodies = []

    def handler():
        bodies.append(web.ctx.env["wsgi.input"].read())  # as multipart parsing does
        if len(bodies) == 1:
            _raise_serialization_failure(counter)
        return "ok"

    server = Server(make_app({"/": handler}, txscope(counter.uri, attempts=3, retry_backoff=0)))
    try:
        assert server.post("/", b"payload")[0] == 200
    finally:
        server.stop()
    assert bodies == [b"payload", b"payload"]


def test_other_errors_are_not_retried(counter):
    calls = []

    def handler():
        calls.append(1)
        raise ValueError("not transient")

    app = make_app({"/": handler}, txscope(counter.uri, attempts=5))
    assert app.request("/").status.startswith("500")
    assert calls == [1]


def test_streaming_body_is_never_retried(counter):
    calls = []

    def handler():
        calls.append(1)
        yield "started"
        _raise_serialization_failure(counter)

    wsgi_app = make_app({"/": handler}, txscope(counter.uri, attempts=5)).wsgifunc()
    body = wsgi_app({"REQUEST_METHOD": "GET", "PATH_INFO": "/", "SERVER_NAME": "x", "SERVER_PORT": "80",
                     "wsgi.url_scheme": "http", "QUERY_STRING": ""}, lambda s, h: None)
    with pytest.raises(Exception):
        list(body)
    assert calls == [1]


def test_retried_request_starts_with_a_clean_response(counter):
    attempts = []

    def handler():
        attempts.append(1)
        web.header("X-Attempt", str(len(attempts)))
        if len(attempts) == 1:
            _raise_serialization_failure(counter)
        return json.dumps(len(attempts))

    response = make_app({"/": handler}, txscope(counter.uri, attempts=3, retry_backoff=0)).request("/")
    assert response.status == "200 OK"
    assert response.headers["X-Attempt"] == "2"
    assert response.data == b"2"


def _raise_serialization_failure(backend):
    """Make this transaction fail the way a real conflict does on each database."""
    if backend.kind == "postgres":
        sqlhub.getConnection().query("SELECT 1")  # the transaction reached the server
        sqlhub.getConnection().query(
            "DO $$ BEGIN RAISE EXCEPTION 'conflict' USING ERRCODE = 'serialization_failure'; END $$")
    elif backend.kind == "mysql":
        sqlhub.getConnection().query("SIGNAL SQLSTATE '40001' SET MYSQL_ERRNO = 1213, MESSAGE_TEXT = 'Deadlock'")
    else:
        def locked(raw):
            raise raw.OperationalError("database is locked") if hasattr(raw, "OperationalError") else \
                __import__("sqlite3").OperationalError("database is locked")

        sqlhub.getConnection()._run(locked)  # as a statement that hit SQLite's busy timeout


@pytest.mark.parametrize("attempts, status", [(1, "500"), (3, "200")])
def test_swallowed_transient_error_is_never_answered_as_success(counter, attempts, status):
    calls = []

    def handler():
        calls.append(1)
        if len(calls) == 1:
            try:
                _raise_serialization_failure(counter)
            except Exception:
                pass  # the handler carries on as if nothing happened
        Counter.get(1).value = 41 + len(calls)
        return "ok"

    response = make_app({"/": handler}, txscope(counter.uri, attempts=attempts, retry_backoff=0)).request("/")
    assert response.status.startswith(status)
    kept = counter.sql("SELECT value FROM txscope_counter WHERE id = 1")[0][0]
    assert kept == (0 if status == "500" else 43)
