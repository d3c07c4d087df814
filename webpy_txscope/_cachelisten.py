"""Keep the shared cache right when programs outside the package write (PostgreSQL triggers).

A psql session, a cron job or a migration writes without a scope, so it
replaces no token.  :func:`install_cache_triggers` gives each table a
statement-level trigger that announces the write with ``pg_notify`` (delivered
when the writer commits, never for a rollback), and every process whose cache
says ``listen=True`` runs one daemon thread that ``LISTEN``\\ s and replaces
the announced tables' tokens in the store.  The rules, each tested:

* **Not connected, not trusted.**  While this process's listener is not
  connected (before its first connect, during a database restart, after any
  error), its store refuses to read tokens: every read goes to the database
  and nothing is stored.  A notification lost while nobody listened cannot
  make an entry servable.
* **Reconnected, invalidated.**  After a reconnect the listener ``LISTEN``\\ s
  first, then replaces the token of every table that has the trigger, and only
  then trusts entries again: a reader that read tokens before the outage and
  stores its result late stores it under tokens that are no longer current.
  The first connect of a process only drops the entries it inherited from its
  parent (a fork): nobody in it read tokens before.
* **The package's own writes stay precise.**  A cached scope that listens
  names the tables it writes in ``txscope.cached`` (``set_config(...,
  true)``: this transaction only) before its first write of each; the trigger
  stays silent for its statements on those tables (it replaces their rows'
  tokens itself), but not for other tables a cascade or a trigger writes, nor
  for what a trigger writes under its statements.
* **A window, measured.**  Between the outside COMMIT and the listener's
  replacement, a reader may still be served the old entry (README.org gives
  the measured figure).  A program that needs the strict guarantee calls
  :func:`webpy_txscope.invalidate` after its commit.
"""

from __future__ import annotations

import logging
import os
import select
import socket
import threading
import time
import weakref
from typing import Any

from sqlobject.dbconnection import DBConnection
from sqlobject.sqlbuilder import sqlrepr

from . import _driver, _metrics
from ._cachestore import ALL_TABLES, StoreUnavailable
from ._errors import ConfigurationError
from ._sqltables import WRITE
from ._tx import ScopeTransaction
from ._uri import describe, open_connection, scrub
from .sharedcache import CachedTransaction, SharedCache, _table_of, _writer_id

log = logging.getLogger("webpy_txscope")

CHANNEL = "txscope_cache"
TRIGGER = "txscope_cache_notify"  # the trigger on each table, and the function it runs
#: Sent by a listening cached scope before it first writes a table: the tables whose tokens it replaces itself.
MARK = "SELECT set_config('txscope.cached', {}, true)"

_FUNCTION = f"""
CREATE OR REPLACE FUNCTION {TRIGGER}() RETURNS trigger LANGUAGE plpgsql AS $txscope$
BEGIN
  -- A cached scope of webpy_txscope names in txscope.cached the tables whose tokens it
  -- replaces itself, row by row.  Announced: every other table (a cascade, a trigger's
  -- writes to another table) and what a trigger writes under its statements (depth > 1).
  IF pg_trigger_depth() > 1 OR NOT coalesce(
      lower(TG_TABLE_NAME) = ANY (string_to_array(current_setting('txscope.cached', true), ',')), false) THEN
    PERFORM pg_notify('{CHANNEL}', TG_TABLE_NAME);
  END IF;
  RETURN NULL;
END
$txscope$
"""

#: Seconds without a notification after which the listener checks its connection with a round trip.
HEARTBEAT = 5.0
#: Seconds a heartbeat may take before readers stop trusting the listener and cut its connection.
PING_TIMEOUT = 2.0
#: The longest wait between two attempts to reconnect.
MAX_BACKOFF = 2.0


# -- installing the triggers ---------------------------------------------------------------


def install_cache_triggers(uri_or_connection, *tables) -> list[str]:
    """Give *tables* (names or SQLObject classes; none: every table) the trigger; return their names.

    Idempotent: the function is replaced and each trigger created or replaced,
    all in one transaction.  Tables created later need another call.
    """
    db = _postgres(uri_or_connection, "install_cache_triggers()")
    t = db.transaction()
    try:
        t.query(_FUNCTION)
        targets = _resolve(t, tables)
        replace = "CREATE OR REPLACE TRIGGER" if _version(t) >= 140000 else "CREATE TRIGGER"
        for qualified, _ in targets:
            if replace == "CREATE TRIGGER":
                t.query(f"DROP TRIGGER IF EXISTS {TRIGGER} ON {qualified}")
            t.query(f"{replace} {TRIGGER} AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON {qualified} "
                    f"FOR EACH STATEMENT EXECUTE FUNCTION {TRIGGER}()")
        t.commit(close=True)
    except BaseException:
        t.rollback()
        raise
    return [name for _, name in targets]


def remove_cache_triggers(uri_or_connection, *tables) -> list[str]:
    """Drop the trigger from *tables* (none: from every table, and drop its function); return their names."""
    db = _postgres(uri_or_connection, "remove_cache_triggers()")
    t = db.transaction()
    try:
        targets = _resolve(t, tables) if tables else t.queryAll(
            "SELECT DISTINCT format('%I.%I', n.nspname, c.relname), c.relname FROM pg_trigger g "
            f"JOIN pg_class c ON c.oid = g.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
            f"WHERE g.tgname = '{TRIGGER}' ORDER BY 2")
        for qualified, _ in targets:
            t.query(f"DROP TRIGGER IF EXISTS {TRIGGER} ON {qualified}")
        if not tables:
            t.query(f"DROP FUNCTION IF EXISTS {TRIGGER}()")
        t.commit(close=True)
    except BaseException:
        t.rollback()
        raise
    return [name for _, name in targets]


def _postgres(uri_or_connection, what: str) -> DBConnection:
    db = open_connection(uri_or_connection)
    if db.dbName != "postgres":
        raise ConfigurationError(f"{what} needs PostgreSQL, not {db.dbName} ({describe(db)}): other databases "
                                 "have no notifications; call webpy_txscope.invalidate() after outside writes")
    return db


def _resolve(t, tables) -> list[tuple[str, str]]:
    """``(quoted schema.table, table)`` for each of *tables*, or every table outside the system schemas."""
    if not tables:
        return t.queryAll(
            "SELECT format('%I.%I', n.nspname, c.relname), c.relname FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind IN ('r', 'p') "
            "AND NOT c.relispartition AND n.nspname <> 'information_schema' AND n.nspname NOT LIKE 'pg\\_%' "
            "ORDER BY 2")
    out = []
    for item in tables:
        sqlmeta = getattr(item, "sqlmeta", None)
        name = sqlmeta.table if sqlmeta is not None else item
        if not isinstance(name, str) or not name:
            raise ConfigurationError(f"a table name or a SQLObject class is needed, not {item!r}")
        # Spelled as SQL spells it, as SQLObject writes sqlmeta.table into its statements.
        t.query("SAVEPOINT txscope_resolve")
        try:
            row = t.queryOne("SELECT format('%I.%I', n.nspname, c.relname), c.relname FROM pg_class c "
                             "JOIN pg_namespace n ON n.oid = c.relnamespace "
                             f"WHERE c.oid = to_regclass({t.sqlrepr(name)}) AND c.relkind IN ('r', 'p')")
        except Exception:
            row = None
            t.query("ROLLBACK TO SAVEPOINT txscope_resolve")
        if row is None:
            raise ConfigurationError(f"no table {name!r} in {describe(t._dbConnection)} (a name is spelled "
                                     "as in SQL: '\"Mixed Case\"' for a quoted one)")
        out.append(tuple(row))
    return out


def _version(t) -> int:
    return int(t.queryOne("SHOW server_version_num")[0])


# -- the package's own writes ---------------------------------------------------------------


class MarkingTransaction(CachedTransaction):
    """A cached transaction that tells the triggers which tables' tokens its writes replace."""

    _marked: frozenset = frozenset()

    def _mark(self, tables) -> None:
        # Before the write, in its transaction.  A name with a comma would name two
        # tables in the list: such a table is simply announced too.
        names = self._marked.union(t for t in tables if t != ALL_TABLES and "," not in t)
        if names != self._marked:
            ScopeTransaction.query(self, MARK.format(sqlrepr(",".join(sorted(names)), "postgres")))
            self._marked = frozenset(names)

    def _note(self, state, what, tables, sql):
        if what is WRITE and not self._marked.issuperset(tables):
            self._mark(tables)
        CachedTransaction._note(state, what, tables, sql)

    def queryInsertID(self, soInstance, id, names, values):
        table = _table_of(soInstance)
        if table not in self._marked:
            self._mark((table,))
        return super().queryInsertID(soInstance, id, names, values)

    def rollback_to(self, point):
        super().rollback_to(point)
        self._marked = frozenset()  # a set_config inside the undone savepoint is undone with it


# -- listening ------------------------------------------------------------------------------


def listen(cache: SharedCache, target) -> None:
    """Make *cache* listen: marking transactions, and a store that trusts tokens only while listening.

    *target* is the database to LISTEN on (a URI or a SQLObject connection), or
    None until a ScopeManager binds the cache to its own (:func:`bind`).
    """
    cache.transaction_class = type("CachedScopeTransaction", (MarkingTransaction,), {"_shared": cache})
    cache.store = WatchedStore(cache.store)
    if target is not None:
        bind(cache, target)


def bind(cache: SharedCache, target) -> None:
    """Listen for *cache* on *target*'s database (the manager's, unless ``listen=`` named one)."""
    store = cache.store
    assert isinstance(store, WatchedStore)
    if store.listener is not None:
        return  # listen="postgres://..." named the database already, or it was bound before
    db = open_connection(target)
    if db.dbName != "postgres":
        raise ConfigurationError(f"SharedCache(listen=...) needs PostgreSQL, not {db.dbName} ({describe(db)}): "
                                 "other databases have no notifications")
    if db.driver not in _driver.LISTEN_DRIVERS:
        raise ConfigurationError(f"SharedCache(listen=...) needs the psycopg or psycopg2 driver, not {db.driver} "
                                 f"({describe(db)}): add ?driver=psycopg to the URI")
    key = (db, store.store)
    with _registry_lock:
        listener = _listeners.get(key)
        if listener is None:
            listener = _listeners[key] = Listener(db, store.store)
    listener.caches.add(cache)
    store.listener = listener


_listeners: dict[tuple[DBConnection, Any], "Listener"] = {}
_registry_lock = threading.Lock()


class WatchedStore:
    """A cache's store, which refuses to read tokens while its listener is not connected.

    A refused read is a :class:`StoreUnavailable`: the transaction then reads
    everything from the database and stores nothing, and says why at DEBUG.
    Writes pass through: the package's own invalidations need no listener.
    """

    def __init__(self, store):
        self.store = store
        self.listener: Listener | None = None

    def __repr__(self) -> str:
        return f"WatchedStore({self.store!r})"

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    def read(self, tables):
        listener = self.listener
        if listener is None or not listener.ready or listener.pinging:
            if listener is None:
                raise StoreUnavailable("SharedCache(listen=True) has no database to listen on: give it to "
                                       "txscope()/ScopeManager, or name one with listen='postgres://...'")
            listener.check()
        return self.store.read(tables)

    def begin_write(self, tables, writer: int) -> None:
        self.store.begin_write(tables, writer)

    def end_write(self, tables, writer: int) -> None:
        self.store.end_write(tables, writer)


class Listener:
    """One daemon thread per process, database and store: LISTENs and replaces the announced tokens."""

    def __init__(self, db: DBConnection, store):
        self.db = db
        self.store = store
        self.name = describe(db)
        self.caches: weakref.WeakSet[SharedCache] = weakref.WeakSet()
        self.ready = False
        self.pinging = 0.0  # when the heartbeat in progress started (monotonic), 0.0 if none
        self.why = f"the cache listener on {self.name} has not connected yet"
        self.heartbeat = HEARTBEAT
        self._reset()

    def _reset(self) -> None:
        """The state of a listener that never ran in this process."""
        self.ready = False
        self.pinging = 0.0
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._raw: Any = None
        self._sock: socket.socket | None = None
        self._wake: tuple[int, int] | None = None
        self._connected_before = False
        self._warned = False  # about a database without any trigger
        self._warned_lost = False

    def __repr__(self) -> str:
        return f"<Listener {self.name} {'ready' if self.ready else 'not connected'}>"

    # -- asked by readers -------------------------------------------------------------

    def check(self) -> None:
        """Raise StoreUnavailable unless this listener can be trusted now; start it if it never was."""
        if not self.ready:
            self.start()
            raise StoreUnavailable(self.why)
        started = self.pinging
        if started and time.monotonic() - started > PING_TIMEOUT:
            # The heartbeat got no answer: a network that drops packets without
            # closing anything.  Cutting the socket ends the listener's wait.
            self._lost(f"its heartbeat got no answer in {PING_TIMEOUT:g} s")
            self._cut()
            raise StoreUnavailable(self.why)

    def start(self) -> None:
        """Start the thread if it does not run (lazily, in each process)."""
        with self._lock:
            if self._thread is not None and self._thread.is_alive() or self._stopping.is_set():
                return
            self._wake = os.pipe()
            self._thread = threading.Thread(target=self._run, name=f"txscope-cache-listener {self.name}",
                                            daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """End the thread and close its connection (tests; a process that ends needs not)."""
        self._stopping.set()
        self.ready = False
        wake = self._wake
        if wake is not None:
            os.write(wake[1], b"x")
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
        if wake is not None and (thread is None or not thread.is_alive()):
            for fd in wake:
                os.close(fd)
            self._wake = None
        with _registry_lock:
            for key, listener in list(_listeners.items()):
                if listener is self:
                    del _listeners[key]
        for cache in list(self.caches):
            store = cache.store
            if isinstance(store, WatchedStore) and store.listener is self:
                store.listener = None

    # -- the thread -----------------------------------------------------------------------

    def _run(self) -> None:
        backoff = 0.05
        while not self._stopping.is_set():
            try:
                self._connect()
                backoff = 0.05
                self._serve()
            except Exception as e:
                self._lost(_reason(e, self.db))
            finally:
                self._close()
            if self._stopping.wait(backoff):
                break
            backoff = min(backoff * 2, MAX_BACKOFF)
        self.ready = False

    def _connect(self) -> None:
        raw = self._raw = _driver.listen_connection(self.db, CHANNEL)
        self._sock = _keepalive(raw.fileno())
        cursor = raw.cursor()
        cursor.execute("SELECT DISTINCT c.relname FROM pg_trigger g JOIN pg_class c ON c.oid = g.tgrelid "
                       f"WHERE g.tgname = '{TRIGGER}'")
        watched = tuple(sorted({_table_of(name) for (name,) in cursor.fetchall()}))
        cursor.close()
        if not watched and not self._warned:
            self._warned = True
            log.warning("the cache listener on %s found no table with the trigger: install them with "
                        "webpy_txscope.install_cache_triggers()", self.name)
        reconnected = self._connected_before
        if reconnected:
            # Notifications sent while nobody listened are lost: every watched
            # table may have changed.  LISTEN came first, so nothing committed
            # from now on is missed; the replacement also makes stale whatever
            # a reader that read tokens before the outage stores late.
            self._invalidate(watched)
        else:
            # Nobody in this process read a token before: only entries
            # inherited from a parent process (a fork) can predate the LISTEN.
            for cache in list(self.caches):
                cache.clear()
        self._invalidate(_driver.notifications(raw))  # what arrived meanwhile
        self._connected_before = True
        self.why = f"the cache listener on {self.name} lost its connection"
        self.ready = True
        done = f"the {len(watched)} tables with the trigger were invalidated" if reconnected \
            else f"{len(watched)} tables have the trigger"
        if self._warned_lost:
            self._warned_lost = False
            log.warning("the cache listener on %s is back; %s", self.name, done)
        else:
            log.debug("the cache listener on %s is listening; %s", self.name, done)

    def _serve(self) -> None:
        raw = self._raw
        fd = raw.fileno()
        assert self._wake is not None
        wake = self._wake[0]
        while not self._stopping.is_set():
            readable, _, _ = select.select([fd, wake], [], [], self.heartbeat)
            if wake in readable:
                return
            if not readable:  # quiet for a while: is the connection still there?
                self.pinging = time.monotonic()
                _driver.ping(raw)
                self.pinging = 0.0
            self._invalidate(_driver.notifications(raw))

    def _invalidate(self, tables) -> None:
        if not tables:
            return
        names = tuple(sorted({_table_of(name) for name in tables}))
        # After the COMMIT that was announced: one replacement, no lease (a
        # reader that read the old token before stores under a stale tag).
        self.store.end_write(names, _writer_id())
        _metrics._counts["cache_trigger_invalidations"] += len(names)

    def _lost(self, reason: str) -> None:
        self.ready = False
        self.why = f"the cache listener on {self.name} is not connected ({reason})"
        if self._stopping.is_set():
            return
        if not self._warned_lost:  # once per outage
            self._warned_lost = True
            log.warning("the cache listener on %s is not connected (%s): reads of the cache go to the "
                        "database until it is back", self.name, reason)
        else:
            log.debug("the cache listener on %s cannot connect yet (%s)", self.name, reason)

    def _cut(self) -> None:
        sock = self._sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _close(self) -> None:
        self.ready = False
        self.pinging = 0.0
        raw, self._raw = self._raw, None
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()  # a duplicate of the driver's descriptor: the connection stays
        if raw is not None:
            try:
                raw.close()
            except Exception:
                pass

    def _after_fork(self) -> None:
        # The thread did not survive the fork, and the connection is the
        # parent's: kept alive unused (closing it would end the parent's
        # session), and a new one made on the child's first read.
        if self._raw is not None:
            _driver.inherit(self._raw)
        for fd in self._wake or ():
            os.close(fd)  # this process's copies: the parent's pipe stays open
        if self._sock is not None:
            self._sock.close()  # a duplicate descriptor: closing it ends nothing
        self._reset()


def _after_fork_in_child() -> None:
    for listener in list(_listeners.values()):
        listener._after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _keepalive(fd: int) -> socket.socket | None:
    """Make the kernel notice a peer that vanished without closing (TCP only); return the socket."""
    sock = socket.socket(fileno=os.dup(fd))
    if sock.family not in (socket.AF_INET, socket.AF_INET6):
        return sock
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for option, value in (("TCP_KEEPIDLE", 5), ("TCP_KEEPINTVL", 1), ("TCP_KEEPCNT", 3),
                          ("TCP_USER_TIMEOUT", 5000)):
        if hasattr(socket, option):
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, option), value)
    return sock


def _reason(error: BaseException, db: DBConnection) -> str:
    """A password-free, one-line reason (SQLObject appends the whole connection string to its errors)."""
    text = scrub(str(error), db).split("used connection string")[0].strip(" ;\n")
    first = text.splitlines()[0] if text else ""
    return f"{type(error).__name__}: {first}" if first else type(error).__name__
