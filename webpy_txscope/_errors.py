"""What a database error means for a scope.

Every driver spells its errors differently, and SQLObject wraps some of them
(statements) but not others (COMMIT goes straight to the driver).  The scope
only needs to know one thing about an error: is it *transient* (the whole
request may safely run again), a *disconnect* (the connection is gone and must
never return to the pool), or *other*.  That knowledge is data, below, plus the
single function :func:`classify`.
"""

from __future__ import annotations

import enum


class ErrorKind(enum.Enum):
    TRANSIENT = "transient"
    DISCONNECT = "disconnect"
    OTHER = "other"


TRANSIENT = ErrorKind.TRANSIENT
DISCONNECT = ErrorKind.DISCONNECT
OTHER = ErrorKind.OTHER

#: PostgreSQL SQLSTATEs (psycopg2 ``pgcode``, psycopg 3 ``sqlstate``,
#: SQLObject's ``ErrorMessage.code``).
SQLSTATES = {
    "40001": TRANSIENT,  # serialization_failure
    "40P01": TRANSIENT,  # deadlock_detected
    "57P01": DISCONNECT,  # admin_shutdown (pg_terminate_backend)
    "57P02": DISCONNECT,  # crash_shutdown
    "57P03": DISCONNECT,  # cannot_connect_now
    "53300": DISCONNECT,  # too_many_connections, for now
    "08000": DISCONNECT,
    "08001": DISCONNECT,
    "08003": DISCONNECT,
    "08004": DISCONNECT,
    "08006": DISCONNECT,
}

#: MySQL / MariaDB error numbers (``e.args[0]`` of both drivers).
MYSQL_CODES = {
    1213: TRANSIENT,  # ER_LOCK_DEADLOCK
    1205: TRANSIENT,  # ER_LOCK_WAIT_TIMEOUT
    1927: DISCONNECT,  # ER_CONNECTION_KILLED
    2002: DISCONNECT,  # CR_CONNECTION_ERROR
    2003: DISCONNECT,  # CR_CONN_HOST_ERROR
    2006: DISCONNECT,  # CR_SERVER_GONE_ERROR
    2013: DISCONNECT,  # CR_SERVER_LOST
    2055: DISCONNECT,  # CR_SERVER_LOST_EXTENDED
    4031: DISCONNECT,  # ER_CLIENT_INTERACTION_TIMEOUT
    1040: DISCONNECT,  # ER_CON_COUNT_ERROR: too many connections, for now
    2005: DISCONNECT,  # CR_UNKNOWN_HOST: DNS, may be a server not up yet
}

#: SQLite result codes (``sqlite3.Error.sqlite_errorcode``), by primary code:
#: an extended code such as SQLITE_BUSY_SNAPSHOT (517) is looked up as ``code & 0xFF``.
SQLITE_CODES = {
    5: TRANSIENT,  # SQLITE_BUSY: "database is locked" after the busy timeout
    6: TRANSIENT,  # SQLITE_LOCKED: a table locked by another connection of the process
    14: DISCONNECT,  # SQLITE_CANTOPEN: the file or its directory is gone (unmounted, removed)
}

#: The last resort, for an error that carries no code: its text.  Only
#: exceptions of the drivers' connection-level classes are read this way
#: (DB-API ``OperationalError`` and ``InterfaceError`` raised by a driver, as
#: psycopg2 does for a dropped socket and SQLite's module for an error built
#: without a code).  Anything else, or anything with a code, is never judged by
#: its text: a user's ``RAISE 'card processor connection failed'`` (SQLSTATE
#: P0001) or MariaDB ``SIGNAL`` (error 1644) is an ordinary error.
TEXT_DRIVERS = ("psycopg2", "psycopg", "sqlite3", "MySQLdb", "_mysql_exceptions", "pymysql",
                "mysql", "mariadb", "pg8000", "pgdb")
TEXT_CLASSES = ("OperationalError", "InterfaceError")
#: A connect that fails with none of these (or of the codes above) was refused
#: for what the URI says (password, database, option): a configuration error,
#: not "try again" (psycopg 3 starts every connect error "connection failed:").
MESSAGES = (
    ("database is locked", TRANSIENT),  # SQLite busy timeout
    ("server closed the connection", DISCONNECT),
    ("connection already closed", DISCONNECT),
    ("the connection is closed", DISCONNECT),
    ("terminating connection", DISCONNECT),
    ("connection refused", DISCONNECT),
    ("could not connect to server", DISCONNECT),
    ("could not translate host name", DISCONNECT),  # DNS: may be a server not up yet
    ("failed to resolve host", DISCONNECT),
    ("timeout expired", DISCONNECT),
    ("no route to host", DISCONNECT),
    ("the database system is", DISCONNECT),  # ... starting up, shutting down, in recovery mode
    ("too many clients", DISCONNECT),
    ("lost connection", DISCONNECT),
    ("server has gone away", DISCONNECT),
    ("already closed", DISCONNECT),
)


class ServiceUnavailable(Exception):
    """Something the scope needs besides the database is unreachable, so nothing was committed.

    Retried like a transient error while attempts are left, then answered
    503 with ``Retry-After``, without counting the database as down.
    """


class CommittedUnconfirmed(Exception):
    """COMMIT succeeded, but a step the answer depends on failed after it.

    The changes were kept: the answer is an error that says so, never a
    success, and never "nothing was kept".
    """


class ConfigurationError(ValueError):
    """The scope was configured with something that cannot work.

    Raised when :func:`~webpy_txscope.txscope` is called, never at the first
    request.  The message says what was wrong and how to fix it, and never
    contains a password.
    """


class DatabaseUnavailable(Exception):
    """The database could not be reached (answered as 503 by the adapters)."""


class ConnectionLost(Exception):
    """The connection died in the middle of a transaction.

    Raised instead of letting a driver reconnect silently and run the rest of
    the transaction in autocommit on a new session.
    """


def _code(exc: BaseException) -> tuple[dict, str | int] | None:
    """The error code *exc* carries and the table it is looked up in, or None."""
    for attr in ("pgcode", "sqlstate"):  # psycopg2, psycopg 3
        code = getattr(exc, attr, None)
        if code:
            return SQLSTATES, code
    code = getattr(exc, "sqlite_errorcode", None)
    if isinstance(code, int):
        return SQLITE_CODES, code & 0xFF
    args = getattr(exc, "args", ())
    first = args[0] if args else None
    code = getattr(first, "code", None)  # SQLObject's ErrorMessage
    if isinstance(code, str) and code:
        return SQLSTATES, code
    if code is None and _from_driver(exc) and isinstance(first, int) and not isinstance(first, bool):
        code = first  # MySQLdb and PyMySQL: (errno, message)
    if isinstance(code, int) and code:  # 0 is their "no code" (a closed connection)
        return MYSQL_CODES, code
    return None


def _from_driver(exc: BaseException) -> bool:
    return type(exc).__module__.split(".")[0] in TEXT_DRIVERS


def _reads_as_text(exc: BaseException) -> bool:
    """True for a driver's connection-level exception class (see TEXT_CLASSES)."""
    return _from_driver(exc) and any(cls.__name__ in TEXT_CLASSES for cls in type(exc).__mro__)


def _chain(exc: BaseException | None):
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen and len(seen) < 8:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def classify(exc: BaseException | None) -> ErrorKind:
    """Say whether *exc* is transient, a disconnect or something else.

    Looks at the exception and at what it was raised from (SQLObject wraps the
    driver's exception and keeps it as ``__context__``).  The first error code
    found decides, through the tables above; a code they do not list is
    OTHER.  Text decides only for a driver's connection-level exception that
    carries no code.

    >>> classify(ValueError("connection failed"))
    <ErrorKind.OTHER: 'other'>
    >>> import sqlite3
    >>> classify(sqlite3.OperationalError("database is locked"))
    <ErrorKind.TRANSIENT: 'transient'>
    """
    for err in _chain(exc):
        if isinstance(err, (ConnectionLost, DatabaseUnavailable)):
            return DISCONNECT
        found = _code(err)
        if found is not None:
            table, code = found
            return table.get(code, OTHER)
        if _reads_as_text(err):
            text = str(err).lower()
            for needle, kind in MESSAGES:
                if needle in text:
                    return kind
    return OTHER
