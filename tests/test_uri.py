"""Passwords as people write them: ``@ / # ?`` unencoded, and never shown anywhere.

The user information of a URI ends at the last ``@`` that is followed by a
host, so ``postgres://app:p@ss/w#rd?x@127.0.0.1/db`` is user ``app`` with
password ``p@ss/w#rd?x``.  Each password below is given to a real database
user (a MariaDB user, and a role of a private PostgreSQL server that checks
passwords, unlike the machine's trust setup), which the scope then logs in as.
"""

import logging
import os
import re
import shutil
import socket
import subprocess
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


@pytest.mark.parametrize("driver", ["psycopg", "psycopg2"])
def test_a_raw_password_logs_in_to_postgres(pg_role, password, driver):
    assert connects_as(f"postgres://txs_pw:{password}@127.0.0.1:{pg_role}/postgres?driver={driver}") == "txs_pw"


# Two functions, not a parameter: once PyMySQL was used, SQLObject's "mysqldb" is PyMySQL
# (install_as_MySQLdb), so every mysqlclient test must run first.
def test_a_raw_password_logs_in_to_mariadb_with_mysqlclient(my_user, password):
    user = connects_as(f"mysql://{my_user}:{password}@127.0.0.1/{DBNAME}?driver=mysqldb")
    assert user.startswith(my_user + "@")


@pytest.mark.parametrize("uri, says", [
    ("mysql://root@127.0.0.1/txs_no_such_db?driver=mysqldb", "Unknown database"),
    (f"mysql://root@127.0.0.1/{DBNAME}?driver=mysqldb&charset=bogus", "character set bogus"),
], ids=["no-database", "charset"])
def test_a_refused_connect_is_a_configuration_error_with_mysqlclient(_databases, uri, says):
    assert_refused(uri, says)  # the other drivers: below


def test_a_raw_password_logs_in_to_mariadb_with_pymysql(my_user, password):
    user = connects_as(f"mysql://{my_user}:{password}@127.0.0.1/{DBNAME}?driver=pymysql")
    assert user.startswith(my_user + "@")


@pytest.mark.parametrize("driver", ["psycopg", "psycopg2"])
def test_a_wrong_raw_password_is_never_shown(pg_role, password, driver, caplog):
    caplog.set_level(logging.DEBUG, logger="webpy_txscope")
    wrong = password.replace("Wvy", "Wvx")
    scope = txscope(f"postgres://txs_pw:{wrong}@127.0.0.1:{pg_role}/postgres?driver={driver}")
    with pytest.raises(ConfigurationError) as failed:
        with scope.transaction():
            sqlhub.getConnection().queryOne("SELECT 1")
    assert "password authentication failed" in str(failed.value)
    texts = [str(failed.value), repr(scope), str(scope.manager.name)] + [r.getMessage() for r in caplog.records]
    for text in texts:
        assert_hidden(text, wrong)


def test_a_wrong_raw_password_is_never_shown_by_mariadb(my_user, password, caplog):
    caplog.set_level(logging.DEBUG, logger="webpy_txscope")
    wrong = password.replace("Wvy", "Wvx")
    scope = txscope(f"mysql://{my_user}:{wrong}@127.0.0.1/{DBNAME}?driver=pymysql")
    with pytest.raises(ConfigurationError) as failed:
        with scope.transaction():
            sqlhub.getConnection().queryOne("SELECT 1")
    assert "Access denied" in str(failed.value)
    for text in [str(failed.value), repr(scope)] + [r.getMessage() for r in caplog.records]:
        assert_hidden(text, wrong)


@pytest.mark.parametrize("template", [
    "postgres://app:{pw}@127.0.0.1/db",
    "postgresql://app:{pw}@db.example:6432/prod?sslmode=require",
    "mysql://app:{pw}@127.0.0.1/db?driver=pymysql",
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


def test_a_percent_escape_is_decoded_when_nothing_else_is_raw():
    """Without a raw ``@ / # ?``, ``%XX`` escapes mean what they always meant."""
    assert txscope("postgres://app:p%40ss%2Fw@127.0.0.1/db").connection.password == "p@ss/w"


def test_an_at_sign_in_an_option_value_is_not_a_password():
    uri = "mysql://root@127.0.0.1/db?driver=pymysql&init_command=SET @@session.sql_mode='ANSI'"
    connection = txscope(uri).connection
    assert (connection.user, connection.password, connection.host) == ("root", "", "127.0.0.1")


# -- a connect the server refuses is a configuration error, not "try again" (503) ----------


REFUSED = {
    "postgres-psycopg": ("postgres://postgres@127.0.0.1/txs_no_such_db?driver=psycopg", "does not exist"),
    "postgres-psycopg2": ("postgres://postgres@127.0.0.1/txs_no_such_db?driver=psycopg2", "does not exist"),
    "mysql-pymysql": ("mysql://root@127.0.0.1/txs_no_such_db?driver=pymysql", "Unknown database"),
}


@pytest.mark.parametrize("name", list(REFUSED))
def test_a_refused_connect_is_a_configuration_error(_databases, name):
    assert_refused(*REFUSED[name])


def assert_refused(uri, says):
    scope = txscope(uri)
    app = make_app({"/": lambda: str(sqlhub.getConnection().queryOne("SELECT 1"))}, scope)
    with pytest.raises(ConfigurationError, match=f"refused the connection .*{says}.*fix the database URI"):
        with scope.transaction():
            sqlhub.getConnection().queryOne("SELECT 1")
    assert paste_app(app).get("/", expect_errors=True).status == 500


@pytest.mark.parametrize("uri", ["postgres://postgres@127.0.0.1:1/test?driver=psycopg",
                                 "postgres://postgres@127.0.0.1:1/test?driver=psycopg2",
                                 "mysql://root@127.0.0.1:1/test?driver=pymysql"])
def test_an_unreachable_server_is_still_unavailable(uri):
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
