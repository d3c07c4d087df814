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
    ("postgres", "no scheme"),
    ("oracle://scott:tiger@db/orcl", "supported schemes are mysql, postgres, postgresql, sqlite"),
    ("postgres://u:pw@127.0.0.1:notaport/db", "malformed"),
    ("postgres://u@127.0.0.1/db?colour=blue", "unknown URI option 'colour'"),
    ("sqlite:/no/such/directory/app.db", "does not exist"),
    ("postgres://u@127.0.0.1/db?driver=pg8000", "pip install 'webpy_txscope[postgres]'"),
    ("mysql://u@127.0.0.1/db?driver=connector", "pip install 'webpy_txscope[mysql]'"),
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
