"""Turn what the user configured into one SQLObject connection, or a clear error.

Everything here runs once, when the scope is created, so that a typo in a URI
fails at import time with a message that says how to fix it, and never shows
the URI's password.
"""

from __future__ import annotations

import os
import re
from urllib.parse import parse_qsl, quote

import sqlobject
from sqlobject.dbconnection import DBConnection

from ._errors import ConfigurationError

SCHEMES = {
    "sqlite": "sqlite",
    "postgres": "postgres",
    "postgresql": "postgres",
    "mysql": "mysql",
}

#: A valid URI of each kind, for the fix a message suggests.
EXAMPLES = {
    "sqlite": "'sqlite:/srv/app/app.db' (an absolute path) or 'sqlite:/:memory:'",
    "postgres": "'postgres://user:password@host:5432/dbname'",
    "mysql": "'mysql://user:password@host:3306/dbname?driver=pymysql'",
}
ANY_EXAMPLE = "for example 'sqlite:/srv/app/app.db', 'postgres://user@host/db' or 'mysql://user@host/db'"

#: The drivers txscope is tested with, per kind: what ``?driver=`` should say.
DRIVERS = {"postgres": "psycopg, psycopg2", "mysql": "mysqldb (mysqlclient), pymysql"}

#: The extra that installs each driver SQLObject may ask for.
EXTRAS = {
    "psycopg": "postgres",
    "psycopg2": "psycopg2",
    "mysqldb": "mysql",
    "mysqlclient": "mysql",
    "pymysql": "pymysql",
}
DEFAULT_EXTRA = {"postgres": "postgres", "mysql": "mysql"}

#: Drivers SQLObject supports that have no extra, with their pip name.
PACKAGES = {"pygresql": "PyGreSQL", "pg8000": "pg8000", "connector": "mysql-connector-python",
            "connector-python": "mysql-connector-python", "mariadb": "mariadb",
            "odbc": "pyodbc", "pyodbc": "pyodbc", "pypyodbc": "pypyodbc"}

#: Option values SQLObject hands to the driver unchecked, which the driver
#: would refuse only when it connects: at every request, as "try again".
CHOICES = {
    ("postgres", "sslmode"): ("disable", "allow", "prefer", "require", "verify-ca", "verify-full"),
}
INTEGER_OPTIONS = {"mysql": ("connect_timeout", "compress", "named_pipe", "use_unicode", "client_flag",
                             "local_infile")}
FILE_OPTIONS = {"mysql": ("ssl_key", "ssl_cert", "ssl_ca", "read_default_file"), "sqlite": ()}

# The host part that ends the user information: host or [IPv6], an optional
# port, then the path, the options or the end.
_HOST = re.compile(r"(?:\[[0-9A-Fa-f:.]*\]|[A-Za-z0-9._%-]*)(?::[^/?#@]*)?(?=[/?#]|$)")
_QUERY_PASSWORD = re.compile(r"([?&](?:password|passwd)=).*?(?=&\w+=|$)", re.I)


def _split(uri: str) -> tuple[str, str | None, str] | None:
    """``(scheme://, userinfo or None, rest)`` of a URI with an authority, else None.

    The user information ends at the *last* ``@`` followed by a host: a
    password may then contain ``@``, ``/``, ``#`` and ``?`` unencoded, as
    people write them.

    >>> _split("postgres://app:p@ss/w#rd?x@127.0.0.1/db?sslmode=require")
    ('postgres://', 'app:p@ss/w#rd?x', '127.0.0.1/db?sslmode=require')
    >>> _split("mysql://root@localhost/test")
    ('mysql://', 'root', 'localhost/test')
    >>> _split("postgres://db.example/prod")
    ('postgres://', None, 'db.example/prod')
    """
    head, sep, rest = uri.partition("://")
    if not sep or not head or head.lower() == "sqlite":  # a SQLite path has no user information
        return None
    at = len(rest)
    while True:
        at = rest.rfind("@", 0, at)
        if at < 0:
            return head + sep, None, rest
        if _HOST.match(rest, at + 1):
            return head + sep, rest[:at], rest[at + 1:]


def mask(uri: str) -> str:
    """Hide the password of a database URI.

    >>> mask("postgres://app:s3cret@db.example/prod?sslmode=require")
    'postgres://app:***@db.example/prod?sslmode=require'
    >>> mask("mysql://root@localhost/test?password=x")
    'mysql://root@localhost/test?password=***'
    >>> mask("postgres://app:p@ss/w#rd?x@127.0.0.1/db")
    'postgres://app:***@127.0.0.1/db'
    """
    head, userinfo, rest = _split(uri) or ("", None, "")
    if userinfo is not None:
        if ":" in userinfo:
            userinfo = userinfo.partition(":")[0] + ":***"
        uri = f"{head}{userinfo}@{rest}"
    return _QUERY_PASSWORD.sub(r"\1***", uri)


def _normalize(uri: str) -> str:
    """The URI with a raw ``@ / # ?`` in its user information percent-encoded.

    Such user information is taken literally, every character (``%``
    included); one without them keeps its ``%XX`` escapes, as before.
    """
    head, userinfo, rest = _split(uri) or ("", None, "")
    if userinfo is None or not any(c in userinfo for c in "@/#?"):
        return uri
    user, colon, password = userinfo.partition(":")
    return f"{head}{quote(user, safe='')}{colon}{quote(password, safe='')}@{rest}"


def scrub(text: str, connection: DBConnection) -> str:
    """Remove *connection*'s password from *text* (a driver's error message).

    Also in the forms a message may quote it: ``repr()`` escapes (SQLObject
    quotes the connection string with ``%r``) and percent-encoding.
    """
    password = getattr(connection, "password", None)
    if not (password and isinstance(password, str) and len(password) > 1):
        return text
    forms = {password, repr(password)[1:-1], quote(password, safe=""), quote(password)}
    for form in sorted(forms, key=len, reverse=True):
        text = text.replace(form, "***")
    return text


def refused(connection: DBConnection, error: BaseException) -> ConfigurationError:
    """The error for a connect the server or the driver refused (a wrong password, no such
    database, an option value it rejects), as opposed to a server that cannot be reached."""
    # SQLObject appends the whole connection string: noise, and the password's place.
    reason = scrub(str(error), connection).split("used connection string")[0].strip(" ;\n")
    return ConfigurationError(f"{describe(connection)} refused the connection ({reason}): "
                              "fix the database URI (user, password, database name or options)")


def describe(connection: DBConnection) -> str:
    """A printable, password-free name for a connection."""
    uri = getattr(connection, "_txscope_uri", None)
    if uri:
        return mask(uri)
    try:
        return mask(connection.uri())
    except Exception:
        return f"{getattr(connection, 'dbName', 'database')} connection"


def _fail(problem: str, uri: str, fix: str) -> ConfigurationError:
    return ConfigurationError(f"{problem} in database URI {mask(uri)!r}: {fix}")


def _install_fix(kind: str, driver: str) -> str:
    extra = f"pip install 'webpy_txscope[{EXTRAS.get(driver, DEFAULT_EXTRA[kind])}]'"
    if driver and driver not in EXTRAS:
        package = PACKAGES.get(driver, driver)
        return f"pip install {package}, or drop ?driver= and {extra}"
    return f"install it with: {extra}"


def open_connection(uri_or_connection) -> DBConnection:
    """Return the process's SQLObject connection for a URI (or the one given)."""
    if isinstance(uri_or_connection, DBConnection):
        return uri_or_connection
    if not isinstance(uri_or_connection, str):
        raise ConfigurationError(
            "txscope() needs a database URI string or a SQLObject connection, "
            f"not {type(uri_or_connection).__name__}"
        )
    uri = uri_or_connection.strip()
    if not uri:
        raise ConfigurationError(f"the database URI is empty: pass one, {ANY_EXAMPLE}")
    scheme, sep, rest = uri.partition(":")
    if uri.lower() in SCHEMES:
        raise _fail("only a scheme, no database", uri, f"for example {EXAMPLES[SCHEMES[uri.lower()]]}")
    if not sep or not scheme:
        if uri.startswith(("/", "./")) or uri.endswith((".db", ".sqlite", ".sqlite3")):
            raise _fail("no scheme", uri, f"for a SQLite file write 'sqlite:{os.path.abspath(uri)}'")
        raise _fail("no scheme", uri, ANY_EXAMPLE)
    kind = SCHEMES.get(scheme.lower())
    if kind is None:
        raise _fail(f"unknown scheme {scheme!r}", uri, f"supported schemes are {', '.join(sorted(SCHEMES))}")
    example = f"for example {EXAMPLES[kind]}"
    if kind == "sqlite":
        if rest.partition("?")[0] in ("", "//"):
            raise _fail("no database file after 'sqlite:'", uri, example)
    elif not rest.startswith("//"):
        raise _fail(f"no '//' after '{scheme}:'", uri, example)
    normal = _normalize(uri)
    parts = _split(normal)
    after_host = parts[2] if parts else rest
    if "#" in after_host:
        # SQLObject drops everything after it, options and passwords included.
        raise _fail("a '#' outside the password", uri, "write it as %23 (in a database name or an option value)")
    query = _options(uri, after_host.partition("?")[2])
    driver = (query.get("driver") or "").split(",")[0].strip().lower()
    _check_options(uri, kind, query)
    if kind == "sqlite":
        _check_sqlite_path(uri, rest.partition("?")[0])
    else:
        _check_port(uri, after_host, example)
    try:
        connection = sqlobject.connectionForURI(normal)
    except ImportError as e:
        raise _fail(f"the database driver is not installed ({e})", uri, _install_fix(kind, driver)) from None
    except TypeError as e:
        match = re.search(r"argument '(\w+)'", str(e))
        name = match.group(1) if match else str(e)
        raise _fail(f"unknown URI option {name!r}", uri,
                    "remove it or check its spelling in SQLObject's connection documentation") from None
    except ValueError as e:
        if "driver" in str(e).lower():
            if driver:
                raise _fail(f"unknown driver {driver!r}", uri,
                            f"use ?driver= with one of {DRIVERS[kind]}, or drop ?driver=") from None
            # SQLObject's default driver list names one that is not installed.
            raise _fail(f"the default driver is not installed ({e})", uri,
                        f"{_install_fix(kind, '')}, or choose one with ?driver= ({DRIVERS[kind]})") from None
        raise _fail("malformed URI", uri, example) from None
    except Exception as e:
        raise _fail(f"unusable URI ({type(e).__name__})", uri, example) from None
    connection._txscope_uri = uri
    return connection


def _options(uri: str, query_string: str) -> dict[str, str]:
    try:
        return dict(parse_qsl(query_string, keep_blank_values=True, strict_parsing=bool(query_string)))
    except ValueError:
        raise _fail(f"malformed options {mask('?' + query_string)!r}", uri,
                    "write options as ?name=value&name=value") from None


def _check_options(uri: str, kind: str, query: dict[str, str]) -> None:
    for name, value in query.items():
        choices = CHOICES.get((kind, name))
        if choices is not None and value not in choices:
            raise _fail(f"{name}={value!r} is not a valid value", uri, f"use one of {', '.join(choices)}")
        if name in INTEGER_OPTIONS.get(kind, ()) and not value.strip().lstrip("-").isdigit():
            raise _fail(f"{name}={value!r} is not a whole number", uri, f"write it as {name}=10, for example")
        if name in FILE_OPTIONS.get(kind, ()) and not os.path.isfile(value):
            raise _fail(f"the file {value!r} given as {name} does not exist", uri,
                        "point it at a readable file (an absolute path)")


def _check_port(uri: str, after_host: str, example: str) -> None:
    host = _HOST.match(after_host)
    port = host.group(0).rpartition("]")[2].partition(":")[2] if host else ""
    if port and not (port.isdigit() and 0 < int(port) < 65536):
        raise _fail(f"the port {port!r} is not a number from 1 to 65535", uri, example)


def _check_sqlite_path(uri: str, path: str) -> None:
    if path.startswith("//"):
        path = path[2:]
    if path in ("/:memory:", ":memory:"):
        return
    directory = os.path.dirname(os.path.abspath(path)) or "."
    if not os.path.isdir(directory):
        raise _fail(f"the directory {directory!r} does not exist", uri,
                    "create it, or point the URI at an existing directory")
