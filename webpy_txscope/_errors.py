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
}

#: Errors that carry no code at all: matched on their text.
MESSAGES = (
    ("database is locked", TRANSIENT),  # SQLite busy timeout
    ("server closed the connection", DISCONNECT),
    ("connection already closed", DISCONNECT),
    ("the connection is closed", DISCONNECT),
    ("terminating connection", DISCONNECT),
    ("connection refused", DISCONNECT),
    ("could not connect to server", DISCONNECT),
    ("connection failed", DISCONNECT),
    ("lost connection", DISCONNECT),
    ("server has gone away", DISCONNECT),
    ("already closed", DISCONNECT),
)


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


def _codes(exc: BaseException):
    """Yield every error code an exception carries, driver's or SQLObject's."""
    for attr in ("pgcode", "sqlstate"):
        code = getattr(exc, attr, None)
        if code:
            yield code
    args = getattr(exc, "args", ())
    if args:
        first = args[0]
        code = getattr(first, "code", None)  # SQLObject's ErrorMessage
        if code is not None:
            yield code
        yield first


def _chain(exc: BaseException | None):
    seen = set()
    while exc is not None and id(exc) not in seen and len(seen) < 8:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def classify(exc: BaseException | None) -> ErrorKind:
    """Say whether *exc* is transient, a disconnect or something else.

    Looks at the exception, at the driver exception SQLObject wrapped
    (``__context__``) and at SQLObject's ``ErrorMessage.code``.

    >>> classify(ValueError("nope"))
    <ErrorKind.OTHER: 'other'>
    """
    for err in _chain(exc):
        if isinstance(err, (ConnectionLost, DatabaseUnavailable)):
            return DISCONNECT
        for code in _codes(err):
            if isinstance(code, str):
                kind = SQLSTATES.get(code)
            elif isinstance(code, int):
                kind = MYSQL_CODES.get(code)
            else:
                kind = None
            if kind is not None:
                return kind
        text = str(err).lower()
        for needle, kind in MESSAGES:
            if needle in text:
                return kind
    return OTHER


def is_dead(raw) -> bool:
    """Tell, without a round trip, whether a driver connection is closed."""
    closed = getattr(raw, "closed", None)  # psycopg2: int, psycopg 3: bool
    if closed is not None and not callable(closed):
        return bool(closed)
    is_open = getattr(raw, "open", None)  # MySQLdb and PyMySQL
    if is_open is not None and not callable(is_open):
        return not is_open
    return False
