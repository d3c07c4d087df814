"""Databases for the tests: SQLite, and the real PostgreSQL and MariaDB of this machine.

Every semantic test takes the ``backend`` fixture and so runs once per
database and driver.  A server that cannot be reached fails the test with a
message saying how to start it; nothing is skipped.
"""

import os
import sqlite3
import sys

import pytest
from sqlobject import sqlhub

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

PG_DSN = dict(host="127.0.0.1", user="postgres", dbname="postgres")
MY_DSN = dict(host="127.0.0.1", user="root", password="")
# One database per test session, so that concurrent sessions never share rows.
DBNAME = "txscope_test_%d" % os.getpid()

START = {
    "postgres": "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start",
    "mysql": "start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd",
}

BACKENDS = {
    "sqlite": None,
    "postgres-psycopg": "postgres://postgres@127.0.0.1/%s?driver=psycopg" % DBNAME,
    "postgres-psycopg2": "postgres://postgres@127.0.0.1/%s?driver=psycopg2" % DBNAME,
    "mysql-mysqlclient": "mysql://root@127.0.0.1/%s?driver=mysqldb" % DBNAME,
    "mysql-pymysql": "mysql://root@127.0.0.1/%s?driver=pymysql" % DBNAME,
}


class Backend:
    """One database and driver, and a way to reach it from outside SQLObject."""

    def __init__(self, name, uri):
        self.name = name
        self.kind = name.split("-")[0]
        self.uri = uri

    def __repr__(self):
        return self.name

    def outside(self):
        """A plain DB-API connection in autocommit: another process's view."""
        if self.kind == "sqlite":
            return sqlite3.connect(self.uri.split(":", 1)[1], isolation_level=None, timeout=10)
        if self.kind == "postgres":
            import psycopg2

            conn = psycopg2.connect(host="127.0.0.1", user="postgres", dbname=DBNAME)
            conn.autocommit = True
            return conn
        import pymysql

        return pymysql.connect(host="127.0.0.1", user="root", password="", database=DBNAME, autocommit=True)

    def sql(self, statement, *params):
        """Run one statement from outside; return its rows."""
        conn = self.outside()
        try:
            cur = conn.cursor()
            if self.kind != "sqlite":
                statement = statement.replace("?", "%s")
            cur.execute(statement, params)
            return cur.fetchall() if cur.description else []
        finally:
            conn.close()

    def fullname(self, user_id):
        rows = self.sql("SELECT fullname FROM users WHERE id = ?", user_id)
        return rows[0][0] if rows else None

    def count(self, table="users"):
        return self.sql("SELECT COUNT(*) FROM %s" % table)[0][0]


def _create_databases():
    import psycopg2
    import pymysql

    try:
        conn = psycopg2.connect(**PG_DSN)
    except psycopg2.OperationalError as e:
        pytest.fail("PostgreSQL is not reachable on 127.0.0.1:5432 (%s); start it with: %s" % (e, START["postgres"]))
    conn.autocommit = True
    cur = conn.cursor()
    cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DBNAME,))
    if not cur.fetchone():
        cur.execute("CREATE DATABASE %s" % DBNAME)
    conn.close()
    try:
        conn = pymysql.connect(**MY_DSN)
    except pymysql.err.OperationalError as e:
        pytest.fail("MariaDB is not reachable on 127.0.0.1:3306 (%s); start it with: %s" % (e, START["mysql"]))
    conn.cursor().execute("CREATE DATABASE IF NOT EXISTS %s CHARACTER SET utf8mb4" % DBNAME)
    conn.close()


def _drop_databases():
    import psycopg2
    import pymysql

    conn = psycopg2.connect(**PG_DSN)
    conn.autocommit = True
    conn.cursor().execute("DROP DATABASE IF EXISTS %s WITH (FORCE)" % DBNAME)
    conn.close()
    conn = pymysql.connect(**MY_DSN)
    conn.cursor().execute("DROP DATABASE IF EXISTS %s" % DBNAME)
    conn.close()


@pytest.fixture(scope="session")
def _databases():
    _create_databases()
    yield
    from sqlobject import connectionForURI

    for uri in filter(None, BACKENDS.values()):
        connectionForURI(uri).close()
    _drop_databases()


@pytest.fixture(scope="session", params=list(BACKENDS))
def backend(request, _databases, tmp_path_factory):
    name = request.param
    uri = BACKENDS[name] or "sqlite:" + str(tmp_path_factory.mktemp("sqlite") / "test.db")
    return Backend(name, uri)


@pytest.fixture(scope="session", params=[name for name in BACKENDS if BACKENDS[name]])
def server_backend(request, _databases):
    """The database servers only, for what SQLite has no equivalent of."""
    return Backend(request.param, BACKENDS[request.param])


@pytest.fixture
def scope(backend):
    """A fresh ``txscope`` on *backend* with the cookbook's table and three users."""
    yield from _fresh_scope(backend)


@pytest.fixture
def server_scope(server_backend):
    yield from _fresh_scope(server_backend)


def _fresh_scope(backend):
    from models import create_tables
    from webpy_txscope import txscope

    scope = txscope(backend.uri)
    conn = scope.connection
    conn.close()  # every test starts with an empty pool
    create_tables(conn)
    conn.query("DELETE FROM users")
    for i in (1, 2, 3):
        conn.query("INSERT INTO users (id, name, fullname, password) VALUES (%d, 'user%d', 'Full %d', 'x')"
                   % (i, i, i))
    if backend.kind == "postgres":  # the next User() must not reuse ids 1 to 3
        conn.query("SELECT setval('users_id_seq', 3)")
    conn.cache.clear()
    _forget_thread_connection()
    yield scope
    _forget_thread_connection()
    sqlhub.__dict__.pop("processConnection", None)


def _forget_thread_connection():
    sqlhub.threadingLocal.__dict__.pop("connection", None)


@pytest.fixture
def no_thread_connection():
    _forget_thread_connection()
    yield
    _forget_thread_connection()


@pytest.fixture
def make_commit_fail(backend, scope):
    """A function that, called inside a transaction, makes its COMMIT fail the way each database can:
    a deferred foreign key on PostgreSQL and SQLite, a killed session on MariaDB."""
    if backend.kind != "mysql":
        backend.sql("DROP TABLE IF EXISTS children")
        backend.sql("DROP TABLE IF EXISTS parents")
        backend.sql("CREATE TABLE parents (id INTEGER PRIMARY KEY)")
        backend.sql("CREATE TABLE children (id INTEGER PRIMARY KEY, parent_id INTEGER "
                    "REFERENCES parents (id) DEFERRABLE INITIALLY DEFERRED)")
    if backend.kind == "sqlite":  # SQLite checks foreign keys only when asked, per connection
        scope.connection.query("PRAGMA foreign_keys = ON")

    def fail():
        conn = sqlhub.getConnection()
        if backend.kind == "mysql":
            backend.sql("KILL %d" % conn.queryOne("SELECT CONNECTION_ID()")[0])
        else:
            conn.query("INSERT INTO children (id, parent_id) VALUES (1, 999)")

    return fail
