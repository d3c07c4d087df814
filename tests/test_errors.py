"""Errors are classified by their code; text decides only for a driver's connection error without one.

Each error here is raised by the real database (a PL/pgSQL function, a
MariaDB procedure, a SQLite trigger) on every database and driver, with a
message that reads like a lost connection or a locked database.
"""

import sqlite3

import pytest
from sqlobject import sqlhub

from webpy_txscope import ScopeManager, classify
from webpy_txscope._errors import DISCONNECT, OTHER, TRANSIENT
from webapps import make_app, paste_app

#: Messages that the text fallback would take for a disconnect or a busy database.
MISLEADING = ["card processor connection failed", "server has gone away", "lost connection to the vault",
              "database is locked", "terminating connection to the bank"]


@pytest.fixture
def raise_in_db(backend, scope):
    """``raise_in_db(message)``: run a statement on the scope's connection that the database
    answers with a user-defined error carrying *message*."""
    conn = scope.connection
    if backend.kind == "postgres":
        conn.query("CREATE OR REPLACE FUNCTION txs_fail(msg text) RETURNS int LANGUAGE plpgsql AS "
                   "$$ BEGIN RAISE EXCEPTION '%', msg; END $$")
    elif backend.kind == "mysql":
        conn.query("DROP PROCEDURE IF EXISTS txs_fail")
        conn.query("CREATE PROCEDURE txs_fail(msg VARCHAR(200)) "
                   "BEGIN SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = msg; END")
    else:
        conn.query("CREATE TABLE IF NOT EXISTS txs_messages (msg TEXT)")

    def run(message):
        db = sqlhub.getConnection()
        quoted = db.sqlrepr(message)
        if backend.kind == "postgres":
            db.query(f"SELECT txs_fail({quoted})")
        elif backend.kind == "mysql":
            db.query(f"CALL txs_fail({quoted})")
        else:  # RAISE takes a literal only: one trigger per message, gone with the rollback
            db.query("DROP TRIGGER IF EXISTS txs_fail")
            db.query(f"CREATE TRIGGER txs_fail BEFORE INSERT ON txs_messages BEGIN SELECT RAISE(ABORT, {quoted}); END")
            db.query("INSERT INTO txs_messages (msg) VALUES ('x')")
        pytest.fail("the database did not raise")

    return run


@pytest.mark.parametrize("message", MISLEADING)
def test_an_error_raised_by_the_database_is_other_whatever_its_text(scope, raise_in_db, message):
    with pytest.raises(Exception) as raised:
        with scope.transaction():
            raise_in_db(message)
    assert message in str(raised.value)
    assert classify(raised.value) is OTHER


def test_an_error_raised_by_the_database_is_not_retried(scope, raise_in_db):
    calls = []

    def unit_of_work():
        calls.append(1)
        raise_in_db("card processor connection failed")

    manager = ScopeManager(scope.connection, attempts=3, retry_backoff=0)
    with pytest.raises(Exception, match="card processor connection failed"):
        manager.run(unit_of_work)
    assert len(calls) == 1


def test_an_error_raised_by_the_database_answers_500_not_503(scope, raise_in_db):
    app = make_app({"/": lambda: raise_in_db("card processor connection failed")}, scope)
    response = paste_app(app).get("/", expect_errors=True)
    assert response.status == 500


def test_an_error_raised_by_the_database_keeps_the_connection(scope, raise_in_db, backend):
    with pytest.raises(Exception):
        with scope.transaction():
            before = sqlhub.getConnection().queryOne(connection_id(backend))[0]
            raise_in_db("server closed the connection unexpectedly")
    with scope.transaction():
        after = sqlhub.getConnection().queryOne(connection_id(backend))[0]
    assert after == before


def connection_id(backend):
    return {"postgres": "SELECT pg_backend_pid()", "mysql": "SELECT CONNECTION_ID()",
            "sqlite": "SELECT 1"}[backend.kind]


def test_a_real_lost_connection_is_a_disconnect(server_scope, server_backend):
    """The other side: a killed session is still a disconnect, by its code or, without one, by its text."""
    with pytest.raises(Exception) as raised:
        with server_scope.transaction():
            db = sqlhub.getConnection()
            kill = {"postgres": "SELECT pg_terminate_backend(%d)", "mysql": "KILL %d"}[server_backend.kind]
            server_backend.sql(kill % db.queryOne(connection_id(server_backend))[0])
            db.queryOne("SELECT 1")
    assert classify(raised.value) is DISCONNECT, repr(raised.value)


def test_sqlite_busy_is_transient_by_its_code(tmp_path):
    path = str(tmp_path / "busy.db")
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("CREATE TABLE t (x INTEGER)")
    holder.execute("BEGIN IMMEDIATE")
    waiter = sqlite3.connect(path, isolation_level=None, timeout=0.01)
    with pytest.raises(sqlite3.OperationalError) as raised:
        waiter.execute("INSERT INTO t VALUES (1)")
    holder.rollback()
    assert raised.value.sqlite_errorcode & 0xFF == 5
    assert classify(raised.value) is TRANSIENT


@pytest.mark.parametrize("error, kind", [
    (sqlite3.OperationalError("database is locked"), TRANSIENT),  # no code: built by hand, text decides
    (ValueError("database is locked"), OTHER),  # not a driver's: never by text
    (RuntimeError("connection failed"), OTHER),
    (ValueError(2006), OTHER),  # a number is a MySQL code only on a MySQL driver's exception
], ids=["sqlite3-without-code", "value-error", "runtime-error", "int-arg-not-a-driver"])
def test_text_decides_only_for_a_driver_connection_error_without_a_code(error, kind):
    assert classify(error) is kind


def test_driver_connection_errors_without_code_use_the_text():
    import MySQLdb
    import psycopg
    import psycopg2
    import pymysql

    assert classify(psycopg2.InterfaceError("connection already closed")) is DISCONNECT
    assert classify(psycopg2.OperationalError("server closed the connection unexpectedly")) is DISCONNECT
    assert classify(psycopg.OperationalError("consuming input failed: server closed the connection")) is DISCONNECT
    assert classify(psycopg2.errors.RaiseException("connection failed")) is OTHER  # a DataError class
    assert classify(pymysql.err.OperationalError(2013, "Lost connection to server")) is DISCONNECT
    assert classify(MySQLdb.OperationalError(1644, "lost connection to the vault")) is OTHER
