"""Everything that reaches into SQLObject's or a driver's private state, in one file.

SQLObject has no public API for the pool, the SQLite per-thread connections,
the MySQL reconnect flag, its postponed-call list or the per-database
``BEGIN`` syntax.  The rest of the package asks this module instead, so that
after a SQLObject or driver upgrade this is the one file to check.
"""

from __future__ import annotations

import os
import threading
import warnings
import weakref
from typing import Any, Callable

from sqlobject import main as _sqlobject_main
from sqlobject.cache import CacheFactory
from sqlobject.dbconnection import DBConnection
from sqlobject.sqlbuilder import SQLObjectState

#: SQLObject's thread-local list of calls postponed to the end of the
#: outermost constructor (see ScopeTransaction._select_all), if this version has it.
POSTPONED = getattr(_sqlobject_main, "_postponed_local", None)


def begin_statements(db_name: str, isolation: str | None, readonly: bool) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """SQL sent first in each transaction, and SQL sent before the connection is pooled again.

    Transaction characteristics are set with ``SET TRANSACTION`` (no
    ``SESSION``), so they last for this transaction only and never leak into
    the next request on the same pooled connection, nor, behind PgBouncer, to
    another client of the same server connection.

    >>> begin_statements("postgres", "SERIALIZABLE", True)
    (('SET TRANSACTION ISOLATION LEVEL SERIALIZABLE, READ ONLY',), ())
    >>> begin_statements("sqlite", "REPEATABLE READ", False)
    (('BEGIN IMMEDIATE',), ())
    >>> begin_statements("sqlite", "SERIALIZABLE", True)
    (('PRAGMA query_only = ON', 'BEGIN'), ('PRAGMA query_only = OFF',))
    """
    if db_name == "sqlite":
        # Python's sqlite3 opens a transaction only before the first write,
        # so reads before it see other commits.  An explicit BEGIN makes the
        # whole request one snapshot.  A writer takes the write lock first
        # (IMMEDIATE): a deferred transaction that read and then writes fails
        # at once with "database is locked" when another writer got there
        # first, which SQLite does not wait for; queued for the lock, writers
        # run one after the other instead.  Read-only is a per-connection
        # switch that must be turned off again.
        begin: tuple[str, ...] = ()
        end: tuple[str, ...] = ()
        if readonly:
            begin, end = ("PRAGMA query_only = ON",), ("PRAGMA query_only = OFF",)
        if isolation in ("SERIALIZABLE", "REPEATABLE READ"):
            begin += ("BEGIN",) if readonly else ("BEGIN IMMEDIATE",)
        return begin, end
    modes = []
    if isolation:
        modes.append("ISOLATION LEVEL " + isolation)
    if readonly:
        modes.append("READ ONLY")
    if not modes:
        return (), ()
    return ("SET TRANSACTION " + ", ".join(modes),), ()


def before_savepoint(db: DBConnection, raw: Any) -> tuple[str, ...]:
    """Statements that must precede a SAVEPOINT on *raw*.

    Python's sqlite3 begins a transaction only before a write; a SAVEPOINT
    outside one starts a transaction that its RELEASE commits, so the
    enclosing scope's transaction must be begun explicitly first.
    """
    if db.dbName == "sqlite" and not raw.in_transaction:
        return ("BEGIN",)
    return ()


def spare_connections(db: DBConnection) -> int:
    """How many pooled connections a checkout may find dead before it opens a new one."""
    return len(getattr(db, "_pool", None) or ())


def before_checkout(db: DBConnection) -> None:
    """Prepare this thread for ``db.getConnection()``."""
    if db.dbName == "sqlite":
        # SQLObject keeps one SQLite connection per thread, but drops, unclosed,
        # those of threads that threading.enumerate() does not list, as it
        # does not list mod_wsgi's request threads until they are looked up.
        threading.current_thread()


def discard(db: DBConnection, raw: Any) -> None:
    """Close a driver connection and make sure it never goes back to the pool."""
    try:
        raw.close()
    except Exception:
        pass
    db._connectionNumbers.pop(id(raw), None)
    pool = getattr(db, "_pool", None)
    if pool and raw in pool:
        pool.remove(raw)
    thread_pool = getattr(db, "_threadPool", None)  # SQLite keeps one per thread
    if thread_pool:
        origin = db._threadOrigination.pop(id(raw), None)
        if origin is not None and thread_pool.get(origin) is raw:
            del thread_pool[origin]


def aborted(raw: Any) -> bool:
    """True if a PostgreSQL connection sits in a failed transaction (psycopg and psycopg2)."""
    info = getattr(raw, "info", None)
    return getattr(info, "transaction_status", None) == 3  # TRANSACTION_STATUS_INERROR


def is_dead(raw: Any) -> bool:
    """Tell, without a round trip, whether a driver connection is closed."""
    closed = getattr(raw, "closed", None)  # psycopg2: int, psycopg 3: bool
    if closed is not None and not callable(closed):
        return bool(closed)
    is_open = getattr(raw, "open", None)  # MySQLdb and PyMySQL
    if is_open is not None and not callable(is_open):
        return not is_open
    return False


# -- per-connection fixes, installed once per DBConnection -------------------------


def prepare(connection: DBConnection) -> None:
    """Install the package's driver fixes on *connection* and track it for fork safety."""
    if not getattr(connection, "_txscope_prepared", False):
        if connection.dbName == "mysql":
            _guard_reconnect(connection)
        elif connection.dbName == "postgres" and connection.driver == "psycopg":
            _no_server_side_prepares(connection)
        connection._txscope_prepared = True
    _connections.add(connection)


def _wrap_make_connection(connection: DBConnection, fix: Callable[[Any], None]) -> None:
    make = connection.makeConnection

    def make_connection() -> Any:
        raw = make()
        fix(raw)
        return raw

    connection.makeConnection = make_connection


def _no_server_side_prepares(connection: DBConnection) -> None:
    """Keep psycopg 3 from preparing statements on the server.

    After a statement ran five times on a connection, psycopg 3 prepares it
    on the server under a name of its own.  Behind a transaction pooler
    (PgBouncer's ``pool_mode = transaction``) the next transaction may run on
    another server connection, where that name does not exist or names
    another statement: errors, or another statement's rows.  The statements
    SQLObject sends are short and planned in microseconds, so the package
    never prepares them, with or without a pooler.
    """

    def fix(raw: Any) -> None:
        raw.prepare_threshold = None

    _wrap_make_connection(connection, fix)


def _guard_reconnect(connection: DBConnection) -> None:
    """Stop MySQL drivers from reconnecting a connection inside a transaction.

    SQLObject asks both MySQL drivers to reconnect silently; after a lost
    connection the rest of a transaction would then run in autocommit on a new
    session, committing half of it.  A dead connection must fail loudly: the
    scope discards it and the next transaction gets a fresh one.
    """
    if connection.driver == "mysqldb":
        def fix(raw: Any) -> None:
            with warnings.catch_warnings():
                # Deprecated, but still the only switch for the flag SQLObject set.
                warnings.simplefilter("ignore", DeprecationWarning)
                raw.ping(False)  # clears libmysqlclient's persistent reconnect flag

        _wrap_make_connection(connection, fix)

    reconnect = connection._force_reconnect

    def force_reconnect(raw: Any) -> None:
        if not raw.get_autocommit():
            raise connection.module.OperationalError(
                2013, "Lost connection to server inside a transaction; not reconnecting")
        reconnect(raw)

    connection._force_reconnect = force_reconnect


# -- LISTEN connections (the shared cache's trigger listener) ---------------------------

#: The PostgreSQL drivers whose connections can LISTEN without blocking.
LISTEN_DRIVERS = ("psycopg", "psycopg2")


def listen_connection(db: DBConnection, channel: str) -> Any:
    """A new driver connection to *db*, in autocommit, listening on *channel*; never pooled."""
    raw = db.makeConnection()
    db._connectionNumbers.pop(id(raw), None)  # SQLObject counts it as one of its own
    try:
        raw.autocommit = True
        if db.driver == "psycopg":
            # Notifications that arrive while a statement runs (the heartbeat)
            # reach psycopg 3's handlers only; the idle ones are read below.
            backlog: list[str] = []
            raw.add_notify_handler(lambda notify: backlog.append(notify.payload))
            raw._txscope_backlog = backlog
        cursor = raw.cursor()
        cursor.execute(f"LISTEN {channel}")
        cursor.close()
    except BaseException:
        raw.close()
        raise
    return raw


def notifications(raw: Any) -> list[str]:
    """The payloads of the notifications *raw* received since the last call, without waiting.

    Raises the driver's error if the connection was lost (the server closed it).
    """
    backlog = getattr(raw, "_txscope_backlog", None)
    if backlog is None:  # psycopg2
        raw.poll()
        payloads = [notify.payload for notify in raw.notifies]
        del raw.notifies[:]
        return payloads
    pgconn = raw.pgconn
    pgconn.consume_input()
    encoding = raw.info.encoding
    while (notify := pgconn.notifies()) is not None:
        backlog.append(notify.extra.decode(encoding, "replace"))
    payloads = backlog[:]
    del backlog[:]
    return payloads


def ping(raw: Any) -> None:
    """One round trip on a listening connection: raises if it is gone."""
    cursor = raw.cursor()
    try:
        cursor.execute("SELECT 1")
        cursor.fetchall()
    finally:
        cursor.close()


# -- fork safety -------------------------------------------------------------------

#: Every connection a scope uses in this process, to be detached after a fork.
_connections: weakref.WeakSet[DBConnection] = weakref.WeakSet()
#: Driver connections inherited from the parent process: never used, never
#: closed (closing would end the parent's sessions), only kept alive.
_inherited: list[Any] = []
#: Called in a forked child after the pools were detached (the core drops the
#: scopes the forking thread had bound).
after_fork_hooks: list[Callable[[], None]] = []


def inherit(raw: Any) -> None:
    """Keep a driver connection of the parent alive in a forked child, unused."""
    _inherited.append(raw)


def _detach_after_fork() -> None:
    """Give a forked child (gunicorn --preload, multiprocessing) its own connections.

    The pooled driver connections share their sockets with the parent; using
    them from two processes corrupts both sessions.
    """
    for connection in list(_connections):
        pool = getattr(connection, "_pool", None)
        if pool:
            _inherited.extend(pool)
            pool[:] = []
        thread_pool = getattr(connection, "_threadPool", None)  # SQLite
        if thread_pool:
            _inherited.extend(thread_pool.values())
            thread_pool.clear()
            connection._threadOrigination.clear()
    for hook in after_fork_hooks:
        hook()


os.register_at_fork(after_in_child=_detach_after_fork)


# -- instances built from cached rows -----------------------------------------------

_clonable: dict[type, tuple[str, ...] | None] = {}


def clonable(cls: type) -> tuple[str, ...] | None:
    """The attribute names of *cls*'s column values, if its instances can be copied from them.

    SQLObject builds an instance from a row in ``get()``/``_init()``, turning
    each value with its column's ``to_python``.  An instance that holds the
    same values is equal to one built that way only if the class builds
    instances SQLObject's way: no ``_init``, ``_SO_selectInit``, ``__init__``
    or ``get`` of its own, and no inheritance (InheritableSQLObject reads its
    child's row too).  None for every other class: it is built as SQLObject
    builds it.
    """
    try:
        return _clonable[cls]
    except KeyError:
        pass
    base = _sqlobject_main.SQLObject
    sqlmeta: Any = getattr(cls, "sqlmeta", None)
    own = sqlmeta is None or any(
        getattr(cls, name) is not getattr(base, name) for name in ("_init", "_SO_selectInit", "__init__")) \
        or getattr(cls, "get").__func__ is not base.get.__func__ \
        or sqlmeta.__init__ is not base.sqlmeta.__init__ \
        or getattr(sqlmeta, "parentClass", None) is not None or getattr(sqlmeta, "childName", None) is not None
    names = None if own else tuple(_sqlobject_main.instanceName(col.name) for col in sqlmeta.columnList)
    _clonable[cls] = names
    return names


def instance_state(cls: type, row_id: Any, row: tuple, connection: Any) -> dict[str, Any]:
    """The id and column values an instance of *cls* built from *row* holds, as SQLObject converts them.

    Builds a throwaway instance the way ``get()`` does (it goes into no
    cache) and reads its ``id`` and column attributes (:func:`clonable`).
    """
    names = clonable(cls)
    assert names is not None and row
    obj: Any = cls(_SO_fetch_no_create=1)
    obj._SO_validatorState = SQLObjectState(obj)
    obj._init(row_id, connection, row)
    values = obj.__dict__
    return {"id": values["id"], **{name: values[name] for name in names}}


def pinned(cls: type, connection: Any) -> bool:
    """Whether ``get(..., connection=connection)`` keeps *connection* on the instance.

    SQLObject does only when it is not already what the class's
    ``_connection`` (for a scope: the thread's) resolves to.
    """
    return getattr(cls, "_connection", None) is not connection


def clones(cls: type, rows: Any, states: list[Any], connection: Any, cache: Any) -> list[Any]:
    """The instances of *cls* that ``get()`` builds from *rows*, given their :func:`instance_state`.

    An instance already in the connection's *cache* (a ``CacheSet``) is
    returned as ``get()`` returns it; any other is a copy of which only the
    per-instance parts are made: its sqlmeta and validator state (pointing
    back at it), its lock and its pending values, as ``SQLObject.__init__``,
    ``get()`` and ``_init()`` make them (clonable() made sure the class has
    no other way).  The values are shared, so they must be immutable (the
    shared cache checks).  A fraction of the cost of building them.
    """
    find, add = instance_cache(cache, cls)
    pin = pinned(cls, connection)
    meta_class: Any = cls.sqlmeta  # type: ignore[attr-defined]
    new, proxy, lock = _new, _proxy, _Lock
    out: list[Any] = []
    for row, state in zip(rows, states):
        if state is None:
            out.append(None)
            continue
        row_id = state["id"]
        obj: Any = find(row_id)
        if obj is not None:  # get() refreshes it from the row unless it holds unwritten values
            out.append(getattr(cls, "get")(row_id, selectResults=row[1:], connection=connection))
            continue
        obj = new(cls)
        back = proxy(obj)
        meta = new(meta_class)
        meta.__dict__ = {"instance": back, "dirty": False}
        validator_state = new(SQLObjectState)
        validator_state.__dict__ = {"soObject": back, "connection": None}
        own = state.copy()
        own["sqlmeta"] = meta
        own["_SO_validatorState"] = validator_state
        own["_SO_writeLock"] = lock()
        own["_SO_createValues"] = {}
        if pin:
            own["_connection"] = connection
            meta._perConnection = True
        obj.__dict__ = own
        add(row_id, obj)
        out.append(obj)
    return out


def instance_cache(cache: Any, cls: type) -> tuple[Callable[[Any], Any], Callable[[Any, Any], None]]:
    """``(find, add)`` for *cls*'s instances in a connection's ``CacheSet``, without its per-call lookups.

    *add* is for an instance nobody else knows yet (``CacheSet.created``).
    """
    caches = cache.caches
    factory = caches.get(cls.__name__)
    if factory is None:
        factory = caches[cls.__name__] = CacheFactory(*cache.args, **cache.kw)
    if factory.doCache and not factory.expiredCache:
        return factory.cache.get, factory.cache.__setitem__
    return factory.tryGet, factory.created


_new = object.__new__
_proxy = weakref.proxy
_Lock = threading.Lock
