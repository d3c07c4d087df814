"""The transaction a scope binds to the hub: SQLObject's, made lazy, fast and safe.

Three differences from :class:`sqlobject.dbconnection.Transaction`, each for a
reason a request scope cares about:

* **Lazy.**  No connection is checked out, and nothing is sent to the server,
  until the first statement.  A request that never touches the database costs
  no round trip and holds no pooled connection.
* **Fast delegation.**  SQLObject's ``Transaction.__getattr__`` rebinds a
  method of the connection on *every* attribute lookup.  Here the bound method
  is kept on the instance after the first lookup, and dropped again when the
  transaction ends (so a finished transaction still refuses to run queries).
* **Safe connections.**  A pooled connection that died while idle is replaced
  before anything of this transaction reached the server; a connection that
  dies mid-transaction is closed and dropped, never returned to the pool, and
  never silently reconnected (MySQL drivers would otherwise run the rest of
  the transaction in autocommit on a new session).
"""

from __future__ import annotations

import logging
import types
from typing import NamedTuple

from sqlobject.cache import CacheSet
from sqlobject.dbconnection import ConnWrapper, Transaction

from . import _driver
from ._driver import discard as _discard
from ._driver import is_dead
from ._errors import DISCONNECT, OTHER, ConnectionLost, DatabaseUnavailable, ErrorKind, classify
from ._uri import describe, refused, scrub

log = logging.getLogger("webpy_txscope")

_MISSING = object()


class Failure(NamedTuple):
    """What the last failed statement of a transaction was.

    Only its kind and a password-free summary are kept, never the exception:
    its traceback holds the frames of the handler, and through them (a
    streaming body's frame) the scope itself, a cycle that would keep a
    dropped response's transaction open until the garbage collector runs.
    """

    kind: ErrorKind
    summary: str

    def error(self) -> Exception:
        """An exception to raise or chain in place of the original."""
        if self.kind is DISCONNECT:
            return DatabaseUnavailable(self.summary)
        return TransactionFailed(self.summary)


class TransactionFailed(Exception):
    """A statement of the transaction had failed, so it could not commit."""


class Savepoint(NamedTuple):
    name: str
    failure: Failure | None  # the transaction's failure when the block began


#: Settings of the connection that SQLObject's column converters read for
#: every string value of every row (``StringValidator.to_python``): fixed when
#: the connection is made, so they are kept like the bound methods.
_CONSTANTS = frozenset(("dbName", "dbEncoding", "_binaryType", "driver"))


class _per_instance:
    """A value made on first access and then kept in the instance's ``__dict__``.

    Unlike ``functools.cached_property`` (Python < 3.12) it takes no lock:
    a transaction belongs to one thread.
    """

    def __init__(self, make):
        self.make = make
        self.name = make.__name__
        self.__doc__ = make.__doc__

    def __get__(self, instance, owner=None):
        if instance is None:
            return self
        value = instance.__dict__[self.name] = self.make(instance)
        return value


class ScopeTransaction(Transaction):
    """A SQLObject transaction that begins on its first statement.

    *begin* is a tuple of SQL statements sent first on the connection (the
    isolation level, read-only); *end* is sent before the connection goes back
    to the pool (to undo per-connection settings such as SQLite's
    ``query_only``).
    """

    # Every request makes one of these, and many never touch the database:
    # the state starts as class defaults, and the caches are made on first use.
    _raw = None
    _began = False
    _reached = False
    _delegated = ()  # names __getattr__ kept on the instance
    #: The last database error (a :class:`Failure`), or None.
    failure: Failure | None = None
    #: How many savepoints of nested blocks are open.
    _savepoints = 0
    #: A nested block's writes could not be undone: the transaction must not commit.
    _poisoned = False

    def __init__(self, dbConnection, begin=(), end=()):
        self._obsolete = False
        self._dbConnection = dbConnection
        self._begin = begin
        self._end = end

    @_per_instance
    def cache(self):
        """This transaction's own instances: never the process-wide cache."""
        return CacheSet(cache=self._dbConnection.doCache)

    @_per_instance
    def _deletedCache(self):
        return {}

    # -- the connection, checked out on first use ---------------------------

    @property
    def _connection(self):
        raw = self._raw
        if raw is None:
            raw = self._checkout()
        return raw

    @_connection.setter
    def _connection(self, value):
        self._raw = value

    # -- what the scope asks ------------------------------------------------

    @property
    def began(self) -> bool:
        """True once a connection was checked out for this transaction."""
        return self._began

    @property
    def holds_connection(self) -> bool:
        """True while a driver connection is checked out (something to commit or roll back)."""
        return self._raw is not None

    @property
    def touched(self) -> bool:
        """True once anything used this transaction: a checkout, a delegated lookup, its cache, a failure.

        ``__init__`` sets exactly the :data:`UNTOUCHED` attributes and nothing
        deletes them; any use adds one to ``__dict__``.  Comparing a length is
        far cheaper than comparing keys, and this runs on every request.
        """
        return len(self.__dict__) != UNTOUCHED_SIZE

    def set_statements(self, begin: tuple[str, ...], end: tuple[str, ...]) -> None:
        """Change what is sent first and last, before the first statement."""
        self._begin, self._end = begin, end

    # -- nested blocks: savepoints -----------------------------------------------

    def savepoint(self) -> Savepoint:
        """Open a savepoint for a nested block (beginning the transaction if needed)."""
        self._savepoints += 1
        point = Savepoint(f"txscope_{self._savepoints}", self.failure)
        try:
            raw = self._connection
            for sql in _driver.before_savepoint(self._dbConnection, raw):
                self.query(sql)
            self.query("SAVEPOINT " + point.name)
        except BaseException:
            self._savepoints -= 1
            raise
        return point

    def release(self, point: Savepoint) -> None:
        """Keep what the block did: it becomes part of the enclosing transaction."""
        self._savepoints -= 1
        self.query("RELEASE SAVEPOINT " + point.name)

    def rollback_to(self, point: Savepoint) -> None:
        """Undo what the block did; the enclosing transaction goes on.

        Instances the block loaded or changed are forgotten, so that the
        enclosing code reads them again instead of the undone values.  If the
        block cannot be undone, the whole transaction can no longer commit.
        """
        self._savepoints -= 1
        failure = self.failure
        if self._obsolete or (failure is not None and failure.kind is not OTHER):
            return  # the server already rolled back everything; the scope will not commit
        raw = self._raw
        if raw is None:
            return
        db = self._dbConnection
        try:
            db._query(raw, "ROLLBACK TO SAVEPOINT " + point.name)
            db._query(raw, "RELEASE SAVEPOINT " + point.name)
        except Exception as e:
            self._fail(classify(e), e)
            self._poisoned = True
            return
        self.failure = point.failure  # a statement that failed inside the block was undone with it
        if "cache" in self.__dict__:
            self.cache.clear()

    # -- the connection, checked out on first use ---------------------------

    def _checkout(self):
        self.assertActive()
        db = self._dbConnection
        _driver.before_checkout(db)
        # Every pooled connection may have died while idle (a server restart);
        # the last try is always a brand new connection.
        for _ in range(_driver.spare_connections(db) + 1):
            try:
                raw = db.getConnection()
            except Exception as e:
                if classify(e) is not DISCONNECT:  # refused for what the URI says: no retry can help
                    self._fail(OTHER, e)
                    raise refused(db, e) from None
                self._fail(DISCONNECT, e)
                # Not chained: SQLObject's error quotes the connection string,
                # password included, and web.py prints the whole chain.
                raise DatabaseUnavailable(
                    "cannot connect to %s: %s" % (describe(db), scrub(str(e), db))
                ) from None
            try:
                db._setAutoCommit(raw, False)
                for sql in self._begin:
                    db._query(raw, sql)
            except Exception as e:
                if classify(e) is DISCONNECT or is_dead(raw):
                    _discard(db, raw)
                    continue
                self._give_back(raw)
                # A lock timeout at SQLite's BEGIN IMMEDIATE is transient like any other.
                self._fail(classify(e), e)
                raise
            self._raw = raw
            self._began = True
            if log.isEnabledFor(logging.DEBUG):
                log.debug("begin on %s: the first statement checked out a connection", describe(db))
            return raw
        self._fail(DISCONNECT, None)
        raise DatabaseUnavailable("no live connection to %s" % describe(db))

    def _give_back(self, raw, rollback=True):
        """Return *raw* to the pool clean: no open transaction, no settings left."""
        db = self._dbConnection
        try:
            if rollback:
                raw.rollback()
            for sql in self._end:
                db._query(raw, sql)
            if db.autoCommit:
                db._setAutoCommit(raw, True)
        except Exception:
            _discard(db, raw)
        else:
            db.releaseConnection(raw, explicit=True)

    def _fail(self, kind: ErrorKind, error: BaseException | None) -> None:
        """Remember a failed statement; a later error never hides a transient one or a disconnect
        (on PostgreSQL every statement after a serialization failure fails too)."""
        if self.failure is None or self.failure.kind is OTHER:
            db = self._dbConnection
            summary = scrub(f"{type(error).__name__}: {error}", db) if error is not None \
                else f"no live connection to {describe(db)}"
            self.failure = Failure(kind, summary)

    # -- statements ----------------------------------------------------------

    def _run(self, method, *args):
        self.assertActive()
        raw = self._raw
        if raw is None:
            raw = self._checkout()
        try:
            result = method(raw, *args)
        except Exception as e:
            return self._recover(e, raw, method, args)
        self._reached = True
        return result

    def _recover(self, error, raw, method, args):
        """Handle a failed statement: replace a stale connection, or record the failure."""
        db = self._dbConnection
        # A stale pooled connection is replaced as long as nothing of this
        # transaction reached the server; a server that drops every new
        # connection too must not keep us looping.
        spares = _driver.spare_connections(db) + 1
        while True:
            kind = classify(error)
            if kind is not DISCONNECT and not is_dead(raw):
                self._fail(kind, error)
                try:
                    raise error
                finally:
                    # This frame is in the error's traceback: naming the error here
                    # would make a cycle that keeps every calling frame (and the
                    # response body a web.py processor frame holds) until gc runs.
                    del error
            self._raw = None
            _discard(db, raw)
            if self._reached or spares <= 0:
                self._fail(DISCONNECT, error)
                self._finish()
                raise ConnectionLost(
                    "the connection to %s was lost mid-transaction; nothing of it was committed"
                    % describe(db)
                ) from error
            spares -= 1
            raw = self._checkout()
            try:
                result = method(raw, *args)
            except Exception as e:
                error = e
                continue
            self._reached = True
            return result

    def query(self, s):
        return self._run(self._dbConnection._query, s)

    def queryAll(self, s):
        return self._run(self._dbConnection._queryAll, s)

    def queryOne(self, s):
        return self._run(self._dbConnection._queryOne, s)

    def queryInsertID(self, soInstance, id, names, values):
        return self._run(self._dbConnection._queryInsertID, soInstance, id, names, values)

    def iterSelect(self, select):
        return iter(self._run(self._select_all, select))

    def _select_all(self, raw, select):
        # Each row becomes a new instance: SQLObject.__init__ first looks for
        # its thread-local list of postponed calls and, the outermost
        # constructor being absent, makes one by catching an AttributeError
        # and deletes it again; that is half the cost of an instance.  This
        # loop plays the outermost constructor instead, exactly as SQLObject
        # would: one list for all rows, its calls run at the end.
        postponed = _driver.POSTPONED.__dict__ if _driver.POSTPONED is not None else None
        if postponed is None or "postponed_calls" in postponed:
            return list(select.IterationClass(self, raw, select, keepConnection=True))
        calls = postponed["postponed_calls"] = []
        try:
            return list(select.IterationClass(self, raw, select, keepConnection=True))
        finally:
            try:
                for call in calls:
                    call()
            finally:
                postponed.pop("postponed_calls", None)

    # -- ending --------------------------------------------------------------

    def commit(self, close=False):
        """Commit; raises the driver's error if COMMIT fails (then roll back)."""
        if self._obsolete:
            return
        if self._raw is None:
            if close:
                self._finish()
            return
        if self._poisoned:
            raise TransactionFailed("a nested block failed and its writes could not be undone")
        if _driver.aborted(self._raw):
            # PostgreSQL answers COMMIT of an aborted transaction with a
            # silent ROLLBACK; the drivers do not raise, so we do.
            raise TransactionAborted("an earlier statement failed, so PostgreSQL rolled the transaction back")
        try:
            Transaction.commit(self, close=close)
        except Exception as e:
            kind = classify(e)
            # A connection lost during COMMIT leaves the outcome unknown: the
            # server may have committed and lost only the reply.  That is a
            # failure (500), never "nothing happened, retry" (503).
            self._fail(OTHER if kind is DISCONNECT else kind, e)
            raise

    def rollback(self):
        """Roll back; never raises, never leaves a dead connection in the pool."""
        if self._obsolete:
            return
        if self._raw is None:
            self._finish()
            return
        try:
            Transaction.rollback(self)
        except Exception:
            raw, self._raw = self._raw, None
            _discard(self._dbConnection, raw)
            self._finish()

    def _makeObsolete(self):
        raw = self._raw
        self._raw = None
        self._finish()
        if raw is not None:
            self._give_back(raw, rollback=False)

    def _finish(self):
        self._obsolete = True
        state = self.__dict__
        state.pop("_deletedCache", None)
        if self._delegated:
            for name in self._delegated:
                state.pop(name, None)
            self._delegated = ()

    def __del__(self):
        if not self._obsolete:
            self.rollback()

    # -- delegation to the connection, bound once ---------------------------

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        self.assertActive()
        if name in _CONSTANTS:
            # A setting this kind of connection lacks (SQLite has no
            # dbEncoding) reads as None, as SQLObject's getattr(..., None) does.
            value = getattr(self._dbConnection, name, None)
            self.__dict__[name] = value
            self._delegated += (name,)
            return value
        attr = getattr(self._dbConnection, name)
        func = getattr(attr, "__func__", _MISSING)
        if func is _MISSING:
            if isinstance(attr, ConnWrapper):
                return ConnWrapper(attr._soClass, self)
            return attr
        bound = types.MethodType(func, self)
        self.__dict__[name] = bound
        self._delegated += (name,)
        return bound


#: The keys of a ScopeTransaction's ``__dict__`` until something uses it: any
#: use at all (a checkout, a delegated lookup, its cache, a failure) adds one.
UNTOUCHED = frozenset(("_obsolete", "_dbConnection", "_begin", "_end"))
UNTOUCHED_SIZE = len(UNTOUCHED)


class TransactionAborted(Exception):
    """COMMIT was asked for a transaction the server had already aborted."""
