"""A cache of query results shared by every process and host, never stale.

``txscope(uri, cache="local")`` or ``cache="redis://host:6379/0"`` caches the
results of the SELECTs SQLObject sends inside a scope (``Model.get``,
iterating a ``select()``, ``count()``), keyed by their SQL text (a
``Model.get`` by table, columns and id) and tagged with the tokens of what
they read.  The rules, each tested:

* **Tokens, not times.**  Random generation tokens live in the shared store
  (:mod:`~webpy_txscope._cachestore`): one per table, one per table for its
  selects and counts, one per row read by id.  An entry carries the tokens
  it depends on as they were *before* its query ran (read once per
  transaction), and is served only while every one of them is still current.
  SQLObject's writes of one row replace that row's and the selects' tokens;
  any other write replaces its tables' tokens.  No wall clock is read anywhere.
* **Writers replace tokens twice.**  Before COMMIT a writer leases a pending
  marker on the tokens its writes concern and replaces them; after COMMIT it
  replaces them again and drops the marker, and only then is the request
  answered.  Nobody stores an entry while a marker lives, so a writer killed
  between its COMMIT and its second replacement leaves nothing trustable.
* **A reader's snapshot never predates its tags.**  Tokens are read before
  the query, and only in transactions whose every statement takes a fresh
  snapshot (READ COMMITTED; SQLite outside an explicit BEGIN).  REPEATABLE
  READ and SERIALIZABLE scopes bypass the cache, and so do MySQL/MariaDB
  scopes unless ``isolation="READ COMMITTED"`` is chosen: MariaDB's default is
  REPEATABLE READ.
* **Replicas are served, never stored.**  With ``replicas=``, a transaction
  routed to a replica is served current entries but stores nothing it read
  there: the replica's snapshot may predate the tokens read before the
  query.  Every scope's writes replace tokens, a GET's on the primary too.
* **Own writes stay own.**  A transaction that wrote a table reads it from the
  database for the rest of the transaction.
* **Failures fail loudly.**  A store that cannot be reached makes reads go to
  the database; a write whose tables cannot be marked is rolled back
  (:class:`CacheUnavailable`), and a commit whose second replacement failed is
  reported as :class:`InvalidationFailed`, never as a plain success.
"""

from __future__ import annotations

import datetime
import decimal
import logging
import random
import threading
import uuid
import weakref
from collections import OrderedDict

from sqlobject import classregistry, sqlbuilder
from sqlobject.cache import CacheFactory, CacheSet

from . import _driver, _metrics
from ._cachestore import ALL_TABLES, StoreUnavailable, open_store
from ._errors import CommittedUnconfirmed, ConfigurationError, ServiceUnavailable
from ._sqltables import BEGIN, NEUTRAL, READ, WRITE, classify_sql
from ._tx import ScopeTransaction, _per_instance
from ._uri import describe

log = logging.getLogger("webpy_txscope")

#: The process's counters, reported by :func:`webpy_txscope.stats`.
counts = _metrics._counts

# Values that no caller can change in place: an entry shares them between requests.
_IMMUTABLE = (int, float, str, bytes, bool, type(None), decimal.Decimal, datetime.date, datetime.time,
              datetime.timedelta, uuid.UUID)


class CacheUnavailable(ServiceUnavailable):
    """A write could not be marked in the shared store, so it was not committed (answered 503)."""


class InvalidationFailed(CommittedUnconfirmed):
    """COMMIT succeeded but the shared store did not take the second replacement.

    The write is durable; other processes may not store entries for its tables
    until the lease ends, and must not be told that all is well.
    """


class _Entry:
    """One cached result: the tables and tags it was read under, and its rows.

    ``values`` is filled on first use by a select or a get whose class
    SQLObject builds the usual way: what each row's instance holds (its id
    and values, converted by the columns), so that later scopes copy
    instances instead of building them; False if a converted value could be
    changed in place.

    ``position`` (with ``replicas=``, session consistency) is the primary's
    WAL position asked after the transaction that stored the entry ended:
    past everything the entry shows, so a client served it needs no later
    position in its cookie, and no round trip to the primary to get one.
    """

    __slots__ = ("tables", "tags", "value", "values", "position")

    def __init__(self, tables, tags, value):
        self.tables = tables
        self.tags = tags
        self.value = value
        self.values = None
        self.position = None


class SharedCache:
    """The entries of one database in this process, and the store that says which are current.

    *max_entries* bounds this process's entries (least recently used go
    first); a result of more than *max_rows* rows is not cached.  *lease*
    (seconds) is how long a writer's pending marker lives if the writer dies:
    it must exceed the longest COMMIT.  *exclude* names tables (or models)
    never cached; a model opts out with ``class sqlmeta: txscope_cache = False``.
    *listen* (PostgreSQL) keeps the cache right when programs outside the
    package write, through the triggers of :func:`install_cache_triggers`:
    True listens on the database of the txscope the cache is given to, a URI
    on that database (a direct one when the scopes go through PgBouncer); see
    :mod:`webpy_txscope._cachelisten`.
    """

    def __init__(self, spec: str, *, max_entries: int = 10_000, max_rows: int = 1_000,
                 lease: float = 10.0, exclude=(), listen: bool | str = False):
        if not isinstance(spec, str):
            raise ConfigurationError(f"cache must be 'local' or a redis:// URL, not {spec!r}")
        if max_entries < 1 or max_rows < 1:
            raise ConfigurationError("cache max_entries and max_rows must be at least 1")
        self.spec = spec
        self.store = open_store(spec, lease)
        self.max_entries = max_entries
        self.max_rows = max_rows
        self._exclude = frozenset(_table_of(item) for item in exclude)
        self._entries: OrderedDict = OrderedDict()
        self._lock = threading.Lock()
        self._safe: dict = {}
        self.transaction_class = type("CachedScopeTransaction", (CachedTransaction,), {"_shared": self})
        self.database: tuple | None = None  # the database its entries hold rows of, once attached
        self._database_name = ""
        self.listen = listen
        if listen:
            from . import _cachelisten  # only caches that listen load it

            _cachelisten.listen(self, None if listen is True else listen)

    def __repr__(self) -> str:
        return f"SharedCache({self.store!r}, {len(self._entries)} entries)"

    def __len__(self) -> int:
        return len(self._entries)

    # -- entries -------------------------------------------------------------

    def _get(self, key):
        entry = self._entries.get(key)
        if entry is not None:
            try:
                self._entries.move_to_end(key)
            except KeyError:  # evicted by another thread meanwhile
                pass
        return entry

    def _put(self, key, tables, tags, value) -> _Entry:
        entry = _Entry(tables, tags, value)
        with self._lock:
            entries = self._entries
            entries[key] = entry
            entries.move_to_end(key)
            while len(entries) > self.max_entries:
                entries.popitem(last=False)
        return entry

    def clear(self) -> None:
        """Drop this process's entries (the tokens in the store stay)."""
        with self._lock:
            self._entries.clear()

    # -- what may be cached ----------------------------------------------------

    def excluded(self, tables) -> bool:
        """True if one of *tables* is never cached (an option or a model's sqlmeta)."""
        opted_out = _opted_out_tables()
        if not self._exclude and not opted_out:
            return False
        return any(table in self._exclude or table in opted_out for table in tables)

    def snapshot_safe(self, tx: ScopeTransaction) -> bool:
        """True if every statement of *tx* reads a fresh snapshot, so tokens read first tag it truly."""
        key = (tx._begin, tx._dbConnection.dbName)
        known = self._safe.get(key)
        if known is None:
            known = self._safe[key] = _fresh_snapshots(tx)
        return known

    # -- writes from elsewhere ------------------------------------------------------

    def invalidate(self, *tables: str) -> None:
        """Make every entry of *tables* stale (all tables if none are named)."""
        names = tuple(_table_of(t) for t in tables) or (ALL_TABLES,)
        writer = _writer_id()
        self.store.begin_write(names, writer)
        self.store.end_write(names, writer)
        counts["cache_invalidations"] += len(names)


def attach(cache: "str | SharedCache", connection=None) -> SharedCache:
    """The cache of one ScopeManager on *connection*: its own entries, the store its setting names."""
    shared = cache if isinstance(cache, SharedCache) else SharedCache(cache)
    if connection is not None:
        database = _database_of(connection)
        if shared.database is None:
            shared.database, shared._database_name = database, describe(connection)
        elif shared.database != database:
            # Entries are keyed by SQL text: one database's rows would answer the other's reads.
            raise ConfigurationError(
                f"this SharedCache already holds rows of {shared._database_name}; it cannot serve "
                f"{describe(connection)} too: give each database its own SharedCache (a cache= "
                f"string makes one per txscope)")
    if shared.listen and connection is not None:
        from . import _cachelisten

        _cachelisten.bind(shared, connection)
    return shared


def _database_of(connection) -> tuple:
    """What tells one database from another: the driver, the server and the database's name or file.

    Not the user or the password: the same database reached as another user
    holds the same rows.
    """
    return (connection.dbName, getattr(connection, "host", None), getattr(connection, "port", None),
            getattr(connection, "db", None), getattr(connection, "filename", None))


def invalidate(*tables, cache: "str | SharedCache" = "local") -> None:
    """Tell the shared cache that something outside a scope wrote *tables*.

    Call it after the write committed (a cron job, a migration, a psql
    session).  Tables may be given as names or SQLObject classes; none means
    every table.  Raises :class:`~webpy_txscope._cachestore.StoreUnavailable`
    if the store cannot be reached: then the entries are not known to be stale.
    """
    if isinstance(cache, SharedCache):
        cache.invalidate(*tables)
        return
    names = tuple(_table_of(t) for t in tables) or (ALL_TABLES,)
    store = open_store(cache)
    writer = _writer_id()
    store.begin_write(names, writer)
    store.end_write(names, writer)
    counts["cache_invalidations"] += len(names)


def _columns(cls) -> tuple[str, ...]:
    """The columns ``cls.get()`` selects, as ``SQLObject._init`` lists them (memoized per class)."""
    known = _columns_memo.get(cls)
    if known is None:
        known = _columns_memo[cls] = tuple(col.dbName for col in cls.sqlmeta.columnList)
    return known


_columns_memo: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _states_of(cls, rows, tx):
    """What an instance of *cls* built from each row holds (:func:`_driver.instance_state`),
    or False if a converted value could be changed in place."""
    out = []
    for row in rows:
        if row is None or row[0] is None:
            out.append(None)
            continue
        state = _driver.instance_state(cls, cls.sqlmeta.idType(row[0]), row[1:], tx)
        if _frozen((tuple(state.values()),)) is None:
            return False
        out.append(state)
    return out


class _EntryCacheSet(CacheSet):
    """A transaction's CacheSet that, where SQLObject would build an instance by a query, copies one.

    ``SQLObject.get`` asks its connection's cache first; on a miss the cache
    stays locked until the caller puts the instance it built.  Here a miss
    first looks for a current ``Model.get`` entry of the shared cache and, if
    one is there, puts a copy of its instance itself.
    """

    def __init__(self, tx, *args, **kw):
        super().__init__(*args, **kw)
        self._tx = tx  # a weak reference: the transaction holds this cache

    def get(self, id, cls):
        caches = self.caches
        try:
            cache = caches[cls.__name__]
        except KeyError:
            cache = caches[cls.__name__] = self._factory()
        obj = cache.get(id)
        if obj is not None:
            return obj
        # The cache is locked now: SQLObject releases it after building an
        # instance, so here it is released only if a copy is put instead.
        try:
            obj = self._copy(id, cls)  # a copy is put in this cache by _driver.clones
        except BaseException:
            cache.finishPut()
            raise
        if obj is not None:
            cache.finishPut()
        return obj

    def _factory(self):
        return CacheFactory(*self.args, **self.kw)

    def _copy(self, id, cls):
        tx = self._tx()
        if tx is None or tx._from_rows or tx._obsolete or _driver.clonable(cls) is None:
            return None
        entry = tx._current_row(cls, id)
        if entry is None:
            return None
        states = entry.values
        if states is None:
            states = entry.values = _states_of(cls, ((id,) + entry.value,), tx)
        if states is False:
            return None
        return _driver.clones(cls, (None,), states, tx, self)[0]


def _select_tokens(tables) -> tuple[str, ...]:
    """The tokens an entry of a statement reading *tables* is tagged with (memoized).

    >>> _select_tokens(("users",))
    ('users', 'users#select', '*')
    """
    known = _select_memo.get(tables)
    if known is None:
        known = _select_memo[tables] = tuple(
            name for table in tables for name in (table, f"{table}#select")) + (ALL_TABLES,)
    return known


_select_memo: dict = {}


def _row_token(table: str, row_id) -> str:
    """The token of one row, which its Model.get entry is tagged with (with its table's)."""
    return f"{table}#{row_id}"


def _table_of(item) -> str:
    """The key of a table given by name or by SQLObject class (a class's is memoized)."""
    if isinstance(item, type):
        known = _class_tables.get(item)
        if known is None:
            known = _class_tables[item] = _table_key(item)
        return known
    return _table_key(item)


_class_tables: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _table_key(item) -> str:
    sqlmeta = getattr(item, "sqlmeta", None)
    name = sqlmeta.table if sqlmeta is not None else item
    if not isinstance(name, str) or not name:
        raise ConfigurationError(f"a table name or a SQLObject class is needed, not {item!r}")
    return name.split(".")[-1].strip('"`').lower()


_opted_out: tuple[int, frozenset] = (-1, frozenset())  # (how many models there were, their tables)


def _opted_out_tables() -> frozenset:
    """Tables of the models whose sqlmeta says ``txscope_cache = False``; looked for again when models are added."""
    global _opted_out
    registries = list(classregistry.MasterRegistry.registries.values())
    total = sum(len(registry.classes) for registry in registries)
    if total != _opted_out[0]:
        tables = {_table_of(cls) for registry in registries for cls in registry.allClasses()
                  if getattr(cls.sqlmeta, "txscope_cache", True) is False}
        _opted_out = (total, frozenset(tables))
    return _opted_out[1]


_referencing: tuple[int, dict] = (-1, {})  # (how many models there were, table -> tables referencing it)


def _referencing_tables() -> dict:
    """For each table, the tables of the models with a ``ForeignKey`` to it (itself, if it references itself).

    A DELETE of a table may change these by the database's own ``ON DELETE``
    action, which the statement does not name.  Looked for again when models
    are added.
    """
    global _referencing
    registries = list(classregistry.MasterRegistry.registries.values())
    total = sum(len(registry.classes) for registry in registries)
    if total != _referencing[0]:
        found: dict = {}
        for registry in registries:
            for cls in registry.allClasses():
                for column in cls.sqlmeta.columnList:
                    target = getattr(column, "foreignKey", None)
                    if not target:
                        continue
                    try:
                        referenced = classregistry.findClass(target, cls.sqlmeta.registry)
                    except KeyError:  # not defined yet: looked for again when it is
                        continue
                    found.setdefault(_table_of(referenced), set()).add(_table_of(cls))
        _referencing = (total, {table: frozenset(tables) for table, tables in found.items()})
    return _referencing[1]


def _fresh_snapshots(tx: ScopeTransaction) -> bool:
    """Whether each statement of *tx* sees everything committed before it started."""
    begin = " ".join(tx._begin).upper()
    db = tx._dbConnection
    if db.dbName == "sqlite":
        # Python's sqlite3 reads outside a transaction until the first write;
        # after it the write lock keeps every other writer out.  An explicit
        # BEGIN (REPEATABLE READ, SERIALIZABLE) holds one snapshot instead.
        return "BEGIN" not in begin
    if "REPEATABLE READ" in begin or "SERIALIZABLE" in begin:
        return False
    if "READ COMMITTED" in begin:
        return True
    if db.dbName == "postgres":
        level = db.queryOne("SHOW default_transaction_isolation")[0]
        return str(level).lower() == "read committed"
    return False  # MySQL and MariaDB: REPEATABLE READ unless chosen otherwise


def _attempt(change, tables, writer: int) -> str:
    """Run a store change; return why it failed, or "" if it did not."""
    try:
        change(tables, writer)
    except StoreUnavailable as e:
        return str(e)
    return ""


def _writer_id() -> int:
    return random.getrandbits(62) + 1  # never 0: an empty lease cell


def _debug(reason: str, sql, quiet: bool = False) -> None:
    """Count a bypass; at DEBUG, say why (*sql*: a statement, or the key of a Model.get).

    *quiet*: the read that bypasses is asked about again, and counted then.
    """
    if quiet:
        return
    counts["cache_bypasses"] += 1
    if log.isEnabledFor(logging.DEBUG):
        if not isinstance(sql, str):
            sql = f"{sql[1]}.get({sql[4]!r})"
        log.debug("cache bypassed (%s): %s", reason, sql if len(sql) <= 200 else sql[:200] + "...")


def _frozen(rows):
    """*rows* as a tuple, or None if a value could be changed in place by a caller."""
    for row in rows:
        if row is None:
            continue
        for value in row:
            if not isinstance(value, _IMMUTABLE) and not (isinstance(value, memoryview) and value.readonly):
                return None
    return tuple(tuple(row) if row is not None else None for row in rows)


class _State:
    """What one transaction knows about the cache."""

    __slots__ = ("tokens", "pending", "written", "bump", "by_row", "off", "leased", "writer", "stored")

    def __init__(self):
        self.tokens: dict = {}
        self.pending: set = set()
        self.written: set = set()  # tables this transaction wrote: read from the database from now on
        self.bump: set = set()  # tokens its commit replaces
        self.by_row = False  # while SQLObject updates or deletes one row by its id
        self.off = ""  # why this whole transaction bypasses the cache, if it does
        self.leased = None  # tables whose pending marker this transaction holds
        self.writer = 0
        self.stored: list | None = None  # the entries it stored, for stamp_entries()


class CachedTransaction(ScopeTransaction):
    """A scope's transaction that reads through the shared cache.

    Only the query methods and COMMIT differ from
    :class:`~webpy_txscope._tx.ScopeTransaction`; like it, it checks out no
    connection until a statement must reach the server, so a request served
    entirely from the cache sends no BEGIN and no COMMIT.
    """

    _shared: SharedCache  # set on the subclass each SharedCache makes
    _cstate: _State | None = None  # made by the first statement
    #: True once an entry was served to this transaction (read by replica routing).
    cache_served = False
    #: The highest ``position`` of the entries served to it (0: none served); None once one without
    #: a position was served (read by replica routing, session consistency).
    served_position: int | None = 0
    _from_rows = False  # while _instances builds instances from a select's rows
    #: Why nothing this transaction reads may be stored, though entries may be served ("" if it may):
    #: set by a transaction routed to a replica (webpy_txscope/replicas.py).
    no_store = ""

    def _state(self) -> _State:
        state = self._cstate
        if state is None:
            state = self._cstate = _State()
            if not self._shared.snapshot_safe(self):
                state.off = "this isolation level keeps one snapshot for the whole transaction"
        return state

    # -- reads -------------------------------------------------------------

    def _through(self, kind: str, sql: str, run):
        """Serve *sql* from the cache if an entry is current, else run it and maybe store it."""
        self.assertActive()
        state = self._state()
        what, tables = classify_sql(sql)
        if what is not READ:
            self._note(state, what, tables, sql)
            return run(sql)
        return self._cached(state, kind, (kind, sql), _select_tokens(tables), sql, run)[0]

    def _SO_selectOne(self, so, columnNames):
        # Model.get of a row this transaction has not loaded: keyed by table, columns and id,
        # so that a hit costs no SQL generation.  SQLObject's own method builds the same
        # SELECT from exactly these (DBAPI._SO_selectOne), so the key stands for the SQL text.
        self.assertActive()
        state = self._state()
        table = so.sqlmeta.table
        key = ("get", table, tuple(columnNames), type(so.id), so.id)  # as _current_row makes it

        def run(_):
            columns = [sqlbuilder.SQLConstant(x) if isinstance(x, str) else x for x in columnNames] or None
            sql = self.sqlrepr(sqlbuilder.Select(columns, staticTables=[table], clause=so.q.id == so.id))
            return ScopeTransaction.queryOne(self, sql)

        table = _table_of(type(so))
        return self._cached(state, "one", key, (table, _row_token(table, so.id), ALL_TABLES), key, run)[0]

    def _tags(self, state: _State, tables, sql, quiet: bool = False):
        """The tags an entry of *tables* carries while it is current, or None if this read bypasses the cache."""
        if state.off:
            _debug(state.off, sql, quiet)
            return None
        if state.written and (ALL_TABLES in state.written or not state.written.isdisjoint(tables)):
            _debug("this transaction wrote one of its tables", sql, quiet)
            return None
        if self._shared.excluded(tables):
            _debug("a table is excluded from the cache", sql, quiet)
            return None
        tokens = state.tokens
        missing = [t for t in tables if t not in tokens]
        if missing:
            try:
                values, pending = self._shared.store.read(missing)
            except StoreUnavailable as e:
                state.off = str(e)  # logged once per outage by the store
                _debug(state.off, sql, quiet)
                return None
            tokens.update(zip(missing, values))
            if pending:
                state.pending.update(missing)
        return tuple(tokens[t] for t in tables)

    def _cached(self, state: _State, kind: str, key, tables, sql, run):
        """The result of *sql*, and the current entry it was served from (None if it was not: a miss, a bypass)."""
        tags = self._tags(state, tables, sql)
        if tags is None:
            return run(sql), None
        cache = self._shared
        entry = cache._get(key)
        if entry is not None and entry.tags == tags:
            counts["cache_hits"] += 1
            self._served(entry)
            return entry.value, entry
        counts["cache_misses"] += 1
        value = run(sql)
        if self.no_store:  # known only now: the statement chose the server
            _debug(self.no_store, sql)
            return value, None
        if not state.pending.isdisjoint(tables):
            _debug("a write to one of its tables is pending", sql)
            return value, None
        rows = (value,) if kind == "one" else value
        if len(rows) > cache.max_rows:
            _debug(f"more than {cache.max_rows} rows", sql)
            return value, None
        frozen = _frozen(rows)
        if frozen is None:
            _debug("a value could be changed in place", sql)
            return value, None
        entry = cache._put(key, tables, tags, frozen[0] if kind == "one" else frozen)
        if state.stored is None:
            state.stored = [entry]
        else:
            state.stored.append(entry)
        return value, None  # instances of a miss are built as usual: copying pays from the first hit on

    def _current_row(self, cls, row_id):
        """A current entry's row of ``cls.get(row_id)``, or None (then ``get()`` reads as it always does)."""
        state = self._state()
        table = _table_of(cls)
        key = ("get", cls.sqlmeta.table, _columns(cls), type(row_id), row_id)
        tables = (table, _row_token(table, row_id), ALL_TABLES)
        tags = self._tags(state, tables, key, quiet=True)
        if tags is None:
            return None
        entry = self._shared._get(key)
        if entry is None or entry.tags != tags or entry.value is None:
            return None
        counts["cache_hits"] += 1
        self._served(entry)
        return entry

    def _served(self, entry: _Entry) -> None:
        self.cache_served = True
        position, highest = entry.position, self.served_position
        if highest is not None and (position is None or position > highest):
            self.served_position = position

    def stamp_entries(self, position: int) -> None:
        """Give the entries this transaction stored *position*, the primary's, asked after it ended."""
        state = self._cstate
        if state is not None and state.stored:
            for entry in state.stored:
                entry.position = position

    @_per_instance
    def cache(self):
        """This transaction's own instances; one missing is copied from a current entry if there is one."""
        return _EntryCacheSet(weakref.ref(self), cache=self._dbConnection.doCache)

    def queryOne(self, s):
        return self._through("one", s, super().queryOne)

    def queryAll(self, s):
        return self._through("all", s, super().queryAll)

    def query(self, s):
        self.assertActive()
        what, tables = classify_sql(s)
        if what is not READ:
            self._note(self._state(), what, tables, s)
        return ScopeTransaction.query(self, s)

    @staticmethod
    def _note(state: _State, what: str, tables, sql: str) -> None:
        """Remember what a statement that is not a cacheable read means for the rest of the transaction."""
        if what is WRITE:
            state.written.update(tables)
            if not state.by_row:
                state.bump.update(tables)  # a table's own token: every entry of the table
            if sql.lstrip()[:8].upper().startswith(("DELETE", "TRUNCATE")):
                # Rows the database itself deletes or changes (ON DELETE CASCADE, SET NULL),
                # which no statement names; a table that references itself too, by row or not.
                referencing = _referencing_tables()
                for table in tables:
                    dependents = referencing.get(table)
                    if dependents:
                        state.written.update(dependents)
                        state.bump.update(dependents)
        elif what is BEGIN:
            # An explicit BEGIN (SQLite, before a SAVEPOINT) holds one snapshot from here on.
            state.off = "the transaction holds one snapshot since an explicit BEGIN"
        elif what is not NEUTRAL:
            _debug("not a plain SELECT of known tables", sql)

    def bypass_cache(self, reason: str) -> None:
        """Read everything of this transaction from the database; its writes still invalidate."""
        self._state().off = reason

    # SQLObject's writes of one row by its id replace that row's token and the
    # table's selects' token, not the table's: the other rows' Model.get entries stay.

    def queryInsertID(self, soInstance, id, names, values):
        state = self._state()
        table = _table_of(type(soInstance))
        state.written.add(table)
        state.bump.add(f"{table}#select")
        if id is not None:
            state.bump.add(_row_token(table, id))  # a get of this id may have cached "no such row"
        new_id = ScopeTransaction.queryInsertID(self, soInstance, id, names, values)
        state.bump.add(_row_token(table, new_id))
        return new_id

    def _SO_update(self, so, values):
        self._by_row(so, type(self._dbConnection)._SO_update, values)

    def _SO_delete(self, so):
        self._by_row(so, type(self._dbConnection)._SO_delete)

    def _by_row(self, so, write, *args) -> None:
        state = self._state()
        table = _table_of(type(so))
        state.bump.update((_row_token(table, so.id), f"{table}#select"))
        state.by_row = True
        try:
            write(self, so, *args)  # its UPDATE/DELETE ... WHERE id = (n) marks the table written
        finally:
            state.by_row = False

    def iterSelect(self, select):
        # The rows SQLObject's Iteration would fetch one by one, fetched at once.
        sql = self._dbConnection.queryForSelect(select)
        self.assertActive()
        state = self._state()
        what, tables = classify_sql(sql)
        if what is not READ:
            self._note(state, what, tables, sql)
            return iter(self._instances(select, ScopeTransaction.queryAll(self, sql)))
        rows, entry = self._cached(state, "select", ("select", sql), _select_tokens(tables), sql,
                                   super().queryAll)
        if entry is not None and not select.ops.get("lazyColumns", 0):
            copies = self._copies(select.sourceClass, entry)
            if copies is not None:
                return iter(copies)
        return iter(self._instances(select, rows))

    def _copies(self, cls, entry):
        """The instances of a select's current *entry*, copied from its rows' values; None if they cannot be."""
        if _driver.clonable(cls) is None:
            return None
        states = entry.values
        if states is None:
            states = entry.values = _states_of(cls, entry.value, self)
        if states is False:
            return None
        return _driver.clones(cls, entry.value, states, self, self.cache)

    def _instances(self, select, rows):
        """Instances for *rows*, built as SQLObject's ``Iteration`` builds them."""
        cls = select.sourceClass
        lazy = select.ops.get("lazyColumns", 0)
        postponed = _driver.POSTPONED.__dict__ if _driver.POSTPONED is not None else None
        own = postponed is not None and "postponed_calls" not in postponed
        if own:
            calls = postponed["postponed_calls"] = []
        self._from_rows = not lazy  # get() has the row: no Model.get entry to look for
        try:
            out = []
            for row in rows:
                if row[0] is None:
                    out.append(None)
                elif lazy:
                    out.append(cls.get(row[0], connection=self))
                else:
                    out.append(cls.get(row[0], selectResults=row[1:], connection=self))
            return out
        finally:
            self._from_rows = False
            if own:
                try:
                    for call in calls:
                        call()
                finally:
                    postponed.pop("postponed_calls", None)

    # -- writes --------------------------------------------------------------

    def commit(self, close=False):
        state = self._cstate
        if state is None or not state.bump or self._raw is None or self._obsolete:
            return ScopeTransaction.commit(self, close)
        store = self._shared.store
        tables = tuple(sorted(state.bump))
        state.writer = _writer_id()
        # The errors are raised outside the except blocks, so that they chain
        # nothing: the scope must not mistake Redis's "connection refused"
        # for the database's (503 "the database is unavailable").
        problem = _attempt(store.begin_write, tables, state.writer)
        if problem:
            raise CacheUnavailable(f"{problem}; the write was rolled back, as other processes could not "
                                   "be told to drop what they cached")
        state.leased = tables
        ScopeTransaction.commit(self, close)  # on failure the caller rolls back, which ends the lease
        state.leased = None
        problem = _attempt(store.end_write, tables, state.writer)
        if problem:
            raise InvalidationFailed(f"the write was committed, but {problem}: other processes read "
                                     "its tables from the database until the store is back")
        counts["cache_invalidations"] += len(tables)

    def rollback(self):
        ScopeTransaction.rollback(self)
        state = self._cstate
        if state is not None and state.leased:
            tables, state.leased = state.leased, None
            try:
                self._shared.store.end_write(tables, state.writer)
            except StoreUnavailable:
                pass  # the lease runs out by itself; the tokens were replaced before COMMIT
