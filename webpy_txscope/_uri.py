"""Turn what the user configured into one SQLObject connection, or a clear error.

Everything here runs once, when the scope is created, so that a typo in a URI
fails at import time with a message that says how to fix it, and never shows
the URI's password.
"""

from __future__ import annotations

import os
import re
from urllib.parse import parse_qsl

import sqlobject
from sqlobject.dbconnection import DBConnection

from ._errors import ConfigurationError

SCHEMES = {
    "sqlite": "sqlite",
    "postgres": "postgres",
    "postgresql": "postgres",
    "mysql": "mysql",
}

#: The extra that installs each driver SQLObject may ask for.
EXTRAS = {
    "psycopg": "postgres",
    "psycopg2": "psycopg2",
    "mysqldb": "mysql",
    "mysqlclient": "mysql",
    "pymysql": "pymysql",
}
DEFAULT_EXTRA = {"postgres": "postgres", "mysql": "mysql"}

_USERINFO_PASSWORD = re.compile(r"(://[^:/@?#]*:)[^@/?#]*(@)")
_QUERY_PASSWORD = re.compile(r"([?&](?:password|passwd)=)[^&#]*", re.I)


def mask(uri: str) -> str:
    """Hide the password of a database URI.

    >>> mask("postgres://app:s3cret@db.example/prod?sslmode=require")
    'postgres://app:***@db.example/prod?sslmode=require'
    >>> mask("mysql://root@localhost/test?password=x")
    'mysql://root@localhost/test?password=***'
    """
    return _QUERY_PASSWORD.sub(r"\1***", _USERINFO_PASSWORD.sub(r"\1***\2", uri))


def scrub(text: str, connection: DBConnection) -> str:
    """Remove *connection*'s password from *text* (a driver's error message)."""
    password = getattr(connection, "password", None)
    if password and isinstance(password, str) and len(password) > 1:
        text = text.replace(password, "***")
    return text


def describe(connection: DBConnection) -> str:
    """A printable, password-free name for a connection."""
    uri = getattr(connection, "_txscope_uri", None)
    if uri:
        return mask(uri)
    try:
        return mask(connection.uri())
    except Exception:
        return "%s connection" % getattr(connection, "dbName", "database")


def _fail(problem: str, uri: str, fix: str) -> ConfigurationError:
    return ConfigurationError("%s in database URI %r: %s" % (problem, mask(uri), fix))


def _driver_extra(scheme: str, query: dict) -> str:
    driver = (query.get("driver") or "").split(",")[0].strip().lower()
    return EXTRAS.get(driver, DEFAULT_EXTRA.get(scheme, scheme))


def open_connection(uri_or_connection) -> DBConnection:
    """Return the process's SQLObject connection for a URI (or the one given)."""
    if isinstance(uri_or_connection, DBConnection):
        return uri_or_connection
    if not isinstance(uri_or_connection, str):
        raise ConfigurationError(
            "txscope() needs a database URI string or a SQLObject connection, "
            "not %s" % type(uri_or_connection).__name__
        )
    uri = uri_or_connection.strip()
    examples = "for example 'sqlite:/srv/app/app.db', 'postgres://user@host/db' or 'mysql://user@host/db'"
    if not uri:
        raise ConfigurationError("the database URI is empty: pass one, %s" % examples)
    scheme, sep, rest = uri.partition(":")
    if not sep or not scheme or not rest:
        raise _fail("no scheme", uri, examples)
    kind = SCHEMES.get(scheme.lower())
    if kind is None:
        raise _fail(
            "unknown scheme %r" % scheme,
            uri,
            "supported schemes are %s" % ", ".join(sorted(SCHEMES)),
        )
    _, _, query_string = rest.partition("?")
    try:
        query = dict(parse_qsl(query_string, keep_blank_values=True, strict_parsing=bool(query_string)))
    except ValueError:
        raise _fail("malformed options %r" % mask("?" + query_string), uri,
                    "write options as ?name=value&name=value") from None
    if kind == "sqlite":
        _check_sqlite_path(uri, rest.partition("?")[0])
    try:
        connection = sqlobject.connectionForURI(uri)
    except ImportError as e:
        driver = (query.get("driver") or "").split(",")[0].strip().lower()
        fix = "install it with: pip install 'webpy_txscope[%s]'" % _driver_extra(kind, query)
        if driver and driver not in EXTRAS:
            fix = "install %s, or drop ?driver= and %s" % (driver, fix)
        raise _fail("the database driver is not installed (%s)" % e, uri, fix) from None
    except TypeError as e:
        match = re.search(r"argument '(\w+)'", str(e))
        name = match.group(1) if match else str(e)
        raise _fail("unknown URI option %r" % name, uri,
                    "remove it or check its spelling in SQLObject's connection documentation") from None
    except ValueError as e:
        if "driver" in str(e).lower():
            raise _fail(str(e), uri, "install it with: pip install 'webpy_txscope[%s]', "
                        "or choose another with ?driver=pymysql" % _driver_extra(kind, query)) from None
        raise _fail("malformed URI (%s)" % str(e).replace(uri, mask(uri)), uri, examples) from None
    except Exception as e:
        raise _fail("unusable URI (%s: %s)" % (type(e).__name__, mask(str(e))), uri, examples) from None
    connection._txscope_uri = uri
    return connection


def _check_sqlite_path(uri: str, path: str) -> None:
    if path.startswith("//"):
        path = path[2:]
    if path in ("", "/:memory:", ":memory:"):
        return
    directory = os.path.dirname(os.path.abspath(path)) or "."
    if not os.path.isdir(directory):
        raise _fail("the directory %r does not exist" % directory, uri,
                    "create it, or point the URI at an existing directory")
