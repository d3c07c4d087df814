"""Bad configuration fails when the scope is created, with a message that says how to fix it."""

import logging
import subprocess
import sys

import pytest
from sqlobject import sqlhub

from webpy_txscope import ConfigurationError, DatabaseUnavailable, mask, strict_commit_veto, txscope
from webpy_txscope.core import ScopeManager


@pytest.mark.parametrize("uri, says", [
    ("", "empty"),
    ("   ", "empty"),
    ("postgres", "only a scheme, no database.*'postgres://user:password@host:5432/dbname'"),
    ("/srv/app/app.db", "no scheme.*'sqlite:/srv/app/app.db'"),
    ("localhost/db", "no scheme"),
    ("oracle://scott:tiger@db/orcl", "supported schemes are mysql, postgres, postgresql, sqlite"),
    ("postgres://u:pw@127.0.0.1:notaport/db", "the port .notaport. is not a number"),
    ("postgres://u@127.0.0.1/db?colour=blue", "unknown URI option 'colour'"),
    ("sqlite:/no/such/directory/app.db", "does not exist"),
    ("postgres://u@127.0.0.1/db?driver=pg8000", "pip install 'webpy_txscope[postgres]'"),
    ("mysql://u@127.0.0.1/db?driver=connector", "pip install 'webpy_txscope[mysql]'"),
    ("mysql://u@127.0.0.1/db?driver=connector", "pip install mysql-connector-python"),
    ("sqlite:", "no database file after 'sqlite:'.*'sqlite:/srv/app/app.db'"),
    ("postgres:", "no '//' after 'postgres:'.*'postgres://user:password@host:5432/dbname'"),
    ("postgres://u@127.0.0.1/db?driver=mysqldb", "unknown driver 'mysqldb'.*one of psycopg, psycopg2"),
    ("mysql://u@127.0.0.1/db?driver=psycopg", "unknown driver 'psycopg'.*one of mysqldb .mysqlclient., pymysql"),
    ("postgres://u@127.0.0.1/db?sslmode=bogus", "sslmode='bogus' is not a valid value.*verify-full"),
    ("mysql://u@127.0.0.1/db?connect_timeout=soon", "connect_timeout='soon' is not a whole number"),
    ("mysql://u@127.0.0.1/db?ssl_ca=/no/such/ca.pem", "the file '/no/such/ca.pem' given as ssl_ca does not exist"),
    ("postgres://u@127.0.0.1/my#db", "a '#' outside the password.*%23"),
])
def test_bad_uri_is_refused_at_creation(uri, says):
    with pytest.raises(ConfigurationError, match=says.replace("[", r"\[").replace("]", r"\]")):
        txscope(uri)


@pytest.mark.parametrize("uri", [
    "postgres://app:s3cretpw@127.0.0.1:notaport/db",
    "postgres://app:s3cretpw@127.0.0.1/db?colour=blue",
    "oracle://app:s3cretpw@db/x",
    "mysql://app@127.0.0.1/db?password=s3cretpw&driver=connector",
])
def test_password_never_appears_in_the_error(uri):
    with pytest.raises(ConfigurationError) as info:
        txscope(uri)
    assert "s3cretpw" not in str(info.value)
    assert "***" in str(info.value)


def test_password_never_appears_in_log_lines(caplog):
    caplog.set_level(logging.DEBUG, logger="webpy_txscope")
    scope = txscope("postgres://postgres:s3cretpw@127.0.0.1:1/test?driver=psycopg2")
    with pytest.raises(DatabaseUnavailable):
        with scope.transaction():
            sqlhub.getConnection().queryOne("SELECT 1")
    scope.manager.unavailable(RuntimeError("could not connect"))
    assert caplog.records, "expected log lines about the failure"
    assert all("s3cretpw" not in r.getMessage() for r in caplog.records)
    assert repr(scope).count("***") == 1


@pytest.mark.parametrize("uri", ["sqlite:", "sqlite:/tmp/x.db?driver=x", "sqlite:/no/such/dir/x.db"])
def test_a_sqlite_error_suggests_nothing_of_a_server(uri):
    with pytest.raises(ConfigurationError) as info:
        txscope(uri)
    assert "no scheme" not in str(info.value)
    assert not any(word in str(info.value) for word in ("postgres", "mysql", "pip install"))


@pytest.mark.parametrize("uri, other", [
    ("postgres://u@127.0.0.1/db?driver=bogus", "mysql"),
    ("postgres://u@127.0.0.1/db?driver=pg8000", "mysql"),
    ("mysql://u@127.0.0.1/db?driver=bogus", "psycopg"),
    ("mysql://u@127.0.0.1/db?driver=connector", "psycopg"),
])
def test_a_driver_error_suggests_drivers_of_its_own_scheme(uri, other):
    with pytest.raises(ConfigurationError) as info:
        txscope(uri)
    assert other not in str(info.value)


def test_a_bad_sslmode_never_reaches_a_request(tmp_path):
    """Refused by txscope(): psycopg would refuse it only when connecting, as 503 "try again" forever."""
    with pytest.raises(ConfigurationError, match="sslmode"):
        txscope("postgres://postgres@127.0.0.1/test?sslmode=bogus&driver=psycopg2")


def test_not_a_uri_at_all():
    with pytest.raises(ConfigurationError, match="URI string or a SQLObject connection"):
        txscope(42)


def test_a_connection_object_is_accepted(tmp_path):
    from sqlobject import connectionForURI

    conn = connectionForURI("sqlite:" + str(tmp_path / "x.db"))
    assert txscope(conn).connection is conn


@pytest.mark.parametrize("kwargs, says", [
    ({"attempts": 0}, "attempts must be an integer of at least 1"),
    ({"attempts": "3"}, "attempts must be an integer of at least 1"),
    ({"isolation": "SNAPSHOT"}, "unknown isolation level 'SNAPSHOT'"),
    ({"commit_veto": "strict"}, "commit_veto must be callable"),
    ({"retry_backoff": -1}, "retry_backoff must be a finite number of seconds >= 0"),
    ({"hub": object()}, "hub must be a sqlobject ConnectionHub"),
])
def test_bad_options_are_refused_at_creation(tmp_path, kwargs, says):
    with pytest.raises(ConfigurationError, match=says):
        txscope("sqlite:" + str(tmp_path / "x.db"), **kwargs)


def test_isolation_names_are_normalized(tmp_path):
    manager = ScopeManager("sqlite:" + str(tmp_path / "x.db"), isolation="repeatable_read",
                           commit_veto=strict_commit_veto)
    assert manager.isolation == "REPEATABLE READ"


def test_mask_hides_passwords():
    assert mask("mysql://root:hunter2@db/x") == "mysql://root:***@db/x"
    assert "hunter2" not in mask("postgres://u@h/db?password=hunter2&sslmode=require")


def test_missing_driver_names_the_extra_to_install(tmp_path):
    # A fresh interpreter where neither PostgreSQL driver can be imported.
    code = (
        "import sys; sys.modules['psycopg'] = None; sys.modules['psycopg2'] = None\n"
        "sys.modules['pgdb'] = None; sys.modules['pg8000'] = None\n"
        "from webpy_txscope import txscope, ConfigurationError\n"
        "try:\n    txscope('postgres://u:pw@127.0.0.1/db')\n"
        "except ConfigurationError as e:\n    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "pip install 'webpy_txscope[postgres]'" in out.stdout, out.stderr
    assert "pw@" not in out.stdout
