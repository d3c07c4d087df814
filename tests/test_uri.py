"""Passwords as people write them: ``@ / # ?`` unencoded, and never shown anywhere.

The user information of a URI ends at the last ``@`` that is followed by a
host, so ``postgres://app:p@ss/w#rd?x@127.0.0.1/db`` is user ``app`` with
password ``p@ss/w#rd?x``.  Each password below is given to a real database
user (a MariaDB user, and a role of a private PostgreSQL server that checks
passwords, unlike the machine's trust setup), which the scope then logs in as.
"""

import importlib
import logging
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from sqlobject import sqlhub

from conftest import BACKENDS, DBNAME, MY_DSN
from webapps import make_app, paste_app
from webpy_txscope import ConfigurationError, mask, txscope

#: One password per awkward character, each around letters that must never be shown.
SPECIAL = "@/#?:%& '\"\\=+"
PASSWORDS = [f"Kqj{c}Zxw{c}Wvy" for c in SPECIAL] + ["Kqj@Zxw/Wvy#Ytr?Uop", "Kqj%40Zxw@Wvy"]
IDS = [f"char-{ord(c)}" for c in SPECIAL] + ["all-four", "percent-literal"]
PG_BIN = "/usr/lib/postgresql/15/bin"


def fragments(password):
    """The pieces of *password* between its special characters: none may appear in any text."""
    return [piece for piece in re.split(r"[^A-Za-z0-9]", password) if len(piece) >= 3]


def assert_hidden(text, password):
    for piece in fragments(password):
        assert piece not in text, f"{piece!r} of the password shows in {text!r}"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def checking_postgres():
    """A private PostgreSQL that asks for passwords on 127.0.0.1 (scram-sha-256): its port."""
    # Not under pytest's tmp_path: its parents are readable by root only.
    directory = Path(tempfile.mkdtemp(prefix="txscope-pg-password-"))
    shutil.chown(directory, "postgres", "postgres")
    data, port = directory / "data", free_port()

    def as_postgres(*command):
        subprocess.run(["su", "postgres", "-s", "/bin/sh", "-c", " ".join(command)],
                       check=True, capture_output=True, timeout=120)

    as_postgres(f"{PG_BIN}/initdb", "-D", str(data), "-U", "postgres", "--auth-local=trust",
                "--auth-host=scram-sha-256")
    with open(data / "postgresql.conf", "a") as conf:
        conf.write(f"port = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{directory}'\n"
                   "fsync = off\n")
    as_postgres(f"{PG_BIN}/pg_ctl", "-D", str(data), "-l", str(directory / "log"), "-w", "start")
    try:
        yield port, str(directory)
    finally:
        as_postgres(f"{PG_BIN}/pg_ctl", "-D", str(data), "-m", "immediate", "stop")
        shutil.rmtree(directory)


def pg_admin(socket_dir, port):
    import psycopg2

    conn = psycopg2.connect(host=socket_dir, port=port, user="postgres", dbname="postgres")
    conn.autocommit = True
    return conn


@pytest.fixture(params=PASSWORDS, ids=IDS)
def password(request):
    return request.param


@pytest.fixture
def pg_role(checking_postgres, password):
    """A role ``txs_pw`` with *password* on the private server; dropped after the test."""
    port, socket_dir = checking_postgres
    admin = pg_admin(socket_dir, port)
    admin.cursor().execute("CREATE ROLE txs_pw LOGIN PASSWORD %s", (password,))
    yield port
    admin.cursor().execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'txs_pw'")
    admin.cursor().execute("DROP ROLE txs_pw")
    admin.close()


@pytest.fixture
def my_user(_databases, password):
    """A MariaDB user ``txs_pw_<pid>`` with *password*; dropped after the test."""
    import pymysql
    from sqlobject import connectionForURI

    # The session's teardown closes the mysqlclient backend's connection: it must
    # exist before PyMySQL takes the name MySQLdb (see below).
    connectionForURI(BACKENDS["mysql-mysqlclient"])
    name = f"txs_pw_{os.getpid()}"
    admin = pymysql.connect(**MY_DSN, autocommit=True)
    admin.cursor().execute("DROP USER IF EXISTS %s@'%%'", (name,))
    admin.cursor().execute("CREATE USER %s@'%%' IDENTIFIED BY %s", (name, password))
    admin.cursor().execute(f"GRANT ALL ON {DBNAME}.* TO %s@'%%'", (name,))
    yield name
    admin.cursor().execute("DROP USER IF EXISTS %s@'%%'", (name,))
    admin.close()


def connects_as(uri):
    scope = txscope(uri)
    try:
        with scope.transaction():
            return sqlhub.getConnection().queryOne("SELECT CURRENT_USER")[0]
    finally:
        scope.connection.close()


def driver_of(backend):
    return backend.uri.rpartition("driver=")[2]


@pytest.fixture
def real_mysqldb(server_backend):
    """mysqlclient under its own name while a mysqlclient test makes a new connection.

    Once SQLObject made a PyMySQL connection, ``MySQLdb`` names PyMySQL for the
    whole process (``pymysql.install_as_MySQLdb()``), and the server tests of
    every file run after the first PyMySQL one."""
    swap = driver_of(server_backend) == "mysqldb" and getattr(sys.modules.get("MySQLdb"), "__name__", "") == "pymysql"
    saved = {name: module for name, module in sys.modules.items() if name.split(".")[0] == "MySQLdb"}
    if swap:  # its submodules too: SQLObject imported PyMySQL's as MySQLdb.constants.CR, ...
        for name in saved:
            del sys.modules[name]
        importlib.import_module("MySQLdb")
    yield
    if swap:
        for name in [name for name in sys.modules if name.split(".")[0] == "MySQLdb"]:
            del sys.modules[name]
        sys.modules.update(saved)


@pytest.fixture
def login_as(request, server_backend, password, real_mysqldb):
    """``login_as(password)``: a URI of *server_backend*'s kind and driver for a user whose
    password is the test's *password* (a role on the private PostgreSQL, a MariaDB user)."""
    driver = driver_of(server_backend)
    if server_backend.kind == "postgres":
        port = request.getfixturevalue("pg_role")
        return lambda given: f"postgres://txs_pw:{given}@127.0.0.1:{port}/postgres?driver={driver}"
    user = request.getfixturevalue("my_user")
    return lambda given: f"mysql://{user}:{given}@127.0.0.1/{DBNAME}?driver={driver}"


def test_a_raw_password_logs_in(login_as, password):
    user = connects_as(login_as(password))
    assert user.partition("@")[0].startswith("txs_pw")


def test_a_wrong_raw_password_is_never_shown(login_as, password, caplog):
    caplog.set_level(logging.DEBUG, logger="webpy_txscope")
    wrong = password.replace("Wvy", "Wvx")
    scope = txscope(login_as(wrong))
    with pytest.raises(ConfigurationError, match="refused the connection") as failed:
        with scope.transaction():
            sqlhub.getConnection().queryOne("SELECT 1")
    scope.connection.close()
    assert "password authentication failed" in str(failed.value) or "Access denied" in str(failed.value)
    for text in [str(failed.value), repr(scope)] + [r.getMessage() for r in caplog.records]:
        assert_hidden(text, wrong)


@pytest.mark.parametrize("template", [
    "postgres://app:{pw}@127.0.0.1/db",
    "postgresql://app:{pw}@db.example:6432/prod?sslmode=require",
    "postgres://app:{pw}@[::1]:5432/db",
    "postgres://app:{pw}@/db",
])
def test_repr_and_mask_hide_a_raw_password(template, password):
    uri = template.format(pw=password)
    assert mask(uri) == template.format(pw="***")
    scope = txscope(uri)
    assert repr(scope).count("***") == 1
    assert_hidden(repr(scope), password)
    assert scope.connection.password == password


@pytest.mark.parametrize("template", [
    "postgres://app:{pw}@127.0.0.1:notaport/db",
    "postgres://app:{pw}@127.0.0.1/db?colour=blue",
    "postgres://app:{pw}@127.0.0.1/db?sslmode=bogus",
    "postgres://app:{pw}@127.0.0.1/db?driver=bogus",
    "postgres://app:{pw}@127.0.0.1/db?driver=pg8000",
    "postgres://app:{pw}@127.0.0.1/d#b",
    "mysql://app:{pw}@127.0.0.1/db?connect_timeout=soon",
    "mysql://app:{pw}@127.0.0.1:99999/db",
    "oracle://app:{pw}@db/x",
    "mysql://app@127.0.0.1/db?password={pw}&driver=connector",
])
def test_a_configuration_error_never_shows_a_raw_password(template, password):
    with pytest.raises(ConfigurationError) as info:
        txscope(template.format(pw=password))
    assert_hidden(str(info.value), password)
    assert "***" in str(info.value)


def test_mask_hides_a_raw_password_in_a_mysql_uri(password):
    assert mask(f"mysql://app:{password}@127.0.0.1/db?driver=pymysql") == "mysql://app:***@127.0.0.1/db?driver=pymysql"


def test_a_percent_escape_is_decoded_when_nothing_else_is_raw():
    """Without a raw ``@ / # ?``, ``%XX`` escapes mean what they always meant."""
    assert txscope("postgres://app:p%40ss%2Fw@127.0.0.1/db").connection.password == "p@ss/w"


def test_an_at_sign_in_an_option_value_is_not_a_password():
    from webpy_txscope._uri import _normalize, _split

    uri = "mysql://root@127.0.0.1/db?driver=pymysql&init_command=SET @@session.sql_mode='ANSI'"
    assert _split(uri)[1] == "root"
    assert _normalize(uri) == uri


# -- a connect the server refuses is a configuration error, not "try again" (503) ----------


def test_a_refused_connect_is_a_configuration_error(server_backend, real_mysqldb):
    no_such_database = server_backend.uri.replace(DBNAME, "txs_no_such_db")
    says = "does not exist" if server_backend.kind == "postgres" else "Unknown database"
    assert_refused(no_such_database, says)
    if server_backend.name == "mysql-mysqlclient":  # PyMySQL's charset path needs the real MySQLdb
        assert_refused(server_backend.uri + "&charset=bogus", "character set bogus")


def assert_refused(uri, says):
    scope = txscope(uri)
    app = make_app({"/": lambda: str(sqlhub.getConnection().queryOne("SELECT 1"))}, scope)
    with pytest.raises(ConfigurationError, match=f"refused the connection .*{says}.*fix the database URI"):
        with scope.transaction():
            sqlhub.getConnection().queryOne("SELECT 1")
    assert paste_app(app).get("/", expect_errors=True).status == 500


def test_an_unreachable_server_is_still_unavailable(server_backend, real_mysqldb):
    uri = server_backend.uri.replace("@127.0.0.1/", "@127.0.0.1:1/")
    app = make_app({"/": lambda: str(sqlhub.getConnection().queryOne("SELECT 1"))}, txscope(uri))
    assert paste_app(app).get("/", expect_errors=True).status == 503


@pytest.mark.parametrize("driver", ["psycopg", "psycopg2"])
def test_an_unreachable_server_never_shows_a_raw_password(password, driver, caplog):
    caplog.set_level(logging.DEBUG, logger="webpy_txscope")
    scope = txscope(f"postgres://app:{password}@127.0.0.1:1/test?driver={driver}")
    app = make_app({"/": lambda: str(sqlhub.getConnection().queryOne("SELECT 1"))}, scope)
    response = paste_app(app).get("/", expect_errors=True)
    assert response.status == 503
    assert caplog.records, "expected log lines about the failure"
    for text in [response.body.decode(), repr(scope)] + [r.getMessage() for r in caplog.records]:
        assert_hidden(text, password)
