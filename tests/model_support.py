"""The pieces of the model-based test (tests/test_model.py).

A *handler program* is data: what a handler does (write, read, register
hooks, doom, nest ``transaction()`` blocks, hit database errors, stream) and
how it ends.  The same interpreter, :func:`run_ops`, runs a program twice:

* against the real package (:class:`RealEnv`), inside a web.py handler served
  by ``txscope`` or inside a plain WSGI app behind ``TxScopeMiddleware``;
* against :class:`ModelEnv`, a few lists standing for the database, from
  which :func:`predict` derives what must be true afterwards.

Sharing the interpreter keeps the two runs in step (same tags, same control
flow); the rules of the package live only in ``ModelEnv`` and ``predict``.
They are README.org's "How a request ends" table plus the semantics issue 11
fixes (streaming handlers, nested blocks as savepoints, exceptions always roll
back, hooks never dropped).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import itertools
import os
import sqlite3

import web
from hypothesis import strategies as st
from sqlobject import SQLObject, StringCol, sqlhub
from sqlobject.sqlite.sqliteconnection import SQLiteConnection

from webpy_txscope import (TxScopeMiddleware, current_scope, doom, invalidate, no_scope, on_commit, scope_options,
                           txscope)
from webpy_txscope._sqltables import WRITE, classify_sql

PG_ADMIN = dict(host="127.0.0.1", user="postgres", dbname="postgres")
#: Sessions of the test's own database that may sit idle in the pool (SQLObject
#: never shrinks it; sequential requests need one, a block opened by a hook a second).
MAX_IDLE_SESSIONS = 3


class ModelRow(SQLObject):
    class sqlmeta:
        table = "txscope_model_rows"

    tag = StringCol(length=80)


# -- the database under test, seen from outside -------------------------------------------------


class Database:
    """The database a run uses, with its own plain driver connection (another client's view)."""

    def __init__(self, kind: str, tmpdir: str):
        self.kind = kind
        #: The shared cache the apps read through, if any: this client's writes invalidate it,
        #: as a cron job's must (README, "Writes from outside the package").
        self.cache = None
        if kind == "sqlite":
            self.path = os.path.join(tmpdir, "model.db")
            # Foreign keys are per SQLite connection: every connection SQLObject
            # opens turns them on, so a deferred violation fails COMMIT as on PostgreSQL.
            # A short busy timeout: a real "database is locked" (see RealEnv.transient) costs 50 ms.
            self.connection = SQLiteConnection(self.path, factory=_foreign_keys_on, timeout=0.05)
            self.name = self.path
        else:
            import psycopg2

            self.name = f"txscope_model_{os.getpid()}"
            admin = psycopg2.connect(**PG_ADMIN)
            admin.autocommit = True
            admin.cursor().execute(f"DROP DATABASE IF EXISTS {self.name} WITH (FORCE)")
            admin.cursor().execute(f"CREATE DATABASE {self.name}")
            admin.close()
            self.connection = f"postgres://postgres@127.0.0.1/{self.name}"
        self.outside = self._connect()
        ddl = self.outside.cursor()
        serial = "INTEGER PRIMARY KEY AUTOINCREMENT" if kind == "sqlite" else "SERIAL PRIMARY KEY"
        ddl.execute(f"CREATE TABLE txscope_model_rows (id {serial}, tag VARCHAR(80) NOT NULL)")
        ddl.execute("CREATE TABLE txscope_model_parents (id INTEGER PRIMARY KEY)")
        ddl.execute("CREATE TABLE txscope_model_children (id INTEGER PRIMARY KEY, parent_id INTEGER "
                    "REFERENCES txscope_model_parents (id) DEFERRABLE INITIALLY DEFERRED)")
        ddl.execute("CREATE TABLE txscope_model_conflict (id INTEGER PRIMARY KEY, v INTEGER NOT NULL)")
        ddl.execute("INSERT INTO txscope_model_conflict (id, v) VALUES (1, 0)")

    def _connect(self):
        if self.kind == "sqlite":
            # timeout=0: a write lock left behind by a request shows at once.
            return sqlite3.connect(self.path, isolation_level=None, timeout=0)
        import psycopg2

        conn = psycopg2.connect(host="127.0.0.1", user="postgres", dbname=self.name)
        conn.autocommit = True
        conn.cursor().execute("SET lock_timeout = '5s'")  # a leaked row lock fails the run, never hangs it
        return conn

    def execute(self, sql: str, params=()):
        cur = self.outside.cursor()
        if self.kind != "sqlite":
            sql = sql.replace("?", "%s")
        cur.execute(sql, params)
        rows = cur.fetchall() if cur.description else []
        what, tables = classify_sql(sql)
        if self.cache is not None and what == WRITE:
            invalidate(*tables, cache=self.cache)
        return rows

    def reset(self) -> None:
        self.execute("DELETE FROM txscope_model_rows")
        self.execute("DELETE FROM txscope_model_children")

    def rows(self) -> list[str]:
        return sorted(tag for (tag,) in self.execute("SELECT tag FROM txscope_model_rows"))

    def leftovers(self) -> list[str]:
        """What a finished request must not leave behind: open transactions, extra sessions."""
        problems = []
        if self.kind == "sqlite":
            try:
                self.execute("BEGIN IMMEDIATE")
                self.execute("ROLLBACK")
            except sqlite3.OperationalError as e:
                problems.append(f"a transaction still holds SQLite's write lock ({e})")
            return problems
        states = self.execute("SELECT state FROM pg_stat_activity WHERE datname = ? AND pid <> pg_backend_pid()",
                              (self.name,))
        busy = [state for (state,) in states if state != "idle"]
        if busy:
            problems.append(f"sessions not idle after the request: {busy}")
        if len(states) > MAX_IDLE_SESSIONS:
            problems.append(f"{len(states)} sessions on the database after the request: connections leak")
        return problems

    def close(self) -> None:
        self.outside.close()
        if self.kind != "sqlite":
            import psycopg2

            from sqlobject import connectionForURI

            connectionForURI(self.connection).close()
            admin = psycopg2.connect(**PG_ADMIN)
            admin.autocommit = True
            admin.cursor().execute(f"DROP DATABASE IF EXISTS {self.name} WITH (FORCE)")
            admin.close()


def _foreign_keys_on(sqlite):
    class Connection(sqlite.Connection):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.execute("PRAGMA foreign_keys = ON")

    return Connection


# -- handler programs -----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Block:
    """``with load_sqlo.transaction(readonly=...):`` around *ops*, ending by *exit*.

    *exit*: ``normal``, ``raise`` (a plain exception) or ``dberror`` (a failing
    statement).  *caught*: the handler wraps the block in ``try/except Exception``.
    """

    ops: tuple
    exit: str = "normal"
    caught: bool = False
    readonly: bool = False

    def __repr__(self):
        opts = "readonly=True" if self.readonly else ""
        tail = f" -> {self.exit}" + (" (caught)" if self.caught else "")
        return f"Block[{opts}]({', '.join(map(_op_repr, self.ops))}{tail})"


def _op_repr(op) -> str:
    if isinstance(op, Block):
        return repr(op)
    return op[0] if len(op) == 1 else f"{op[0]}:{op[1]}"


#: How a non-streaming handler ends.  ``http:N`` raises the web.py HTTPError of
#: status N (the WSGI app answers status N instead: there is nothing to raise).
ENDINGS = ("return", "return:503", "crash", "interrupt", "http:301", "http:302", "http:303", "http:307",
           "http:304", "http:400", "http:403", "http:404", "http:409", "http:410", "http:500", "http:503")
STATUS_LINES = {200: "200 OK", 301: "301 Moved Permanently", 302: "302 Found", 303: "303 See Other",
                304: "304 Not Modified", 307: "307 Temporary Redirect", 400: "400 Bad Request",
                403: "403 Forbidden", 404: "404 Not Found", 409: "409 Conflict", 410: "410 Gone",
                500: "500 Internal Server Error", 503: "503 Service Unavailable"}


@dataclasses.dataclass(frozen=True)
class Program:
    """One request: which adapter serves it, what the handler does, how it ends, what the client does.

    *segments* is None for a handler that returns a string; otherwise the
    handler returns a generator that runs ``segments[i]`` and then yields
    chunk ``c<i>``.  *raise_at*/*raise_kind*: the body raises (``crash`` or an
    ``http:N``) after running that segment, before its chunk.  *close_after*:
    the client hangs up after that many chunks.  *status*: the streaming WSGI
    app's status.
    """

    adapter: str = "webpy"
    attempts: int = 1
    prior: bool = False  # the thread had a connection of its own before the request
    no_scope: bool = False
    readonly: bool = False
    isolation: str | None = None
    prelude: tuple = ()
    ending: str = "return"
    segments: tuple | None = None
    raise_at: int | None = None
    raise_kind: str = "crash"
    close_after: int | None = None
    status: int = 200

    def __repr__(self):
        fields = [f"{self.adapter}", f"attempts={self.attempts}"]
        if self.prior:
            fields.append("prior")
        if self.no_scope:
            fields.append("@no_scope")
        if self.readonly or self.isolation:
            fields.append(f"@scope_options(readonly={self.readonly}, isolation={self.isolation!r})")
        fields.append(f"prelude=[{', '.join(map(_op_repr, self.prelude))}]")
        if self.segments is None:
            fields.append(f"ending={self.ending}")
        else:
            segs = " | ".join(f"[{', '.join(map(_op_repr, s))}]" for s in self.segments)
            fields.append(f"stream(status={self.status}): {segs}")
            if self.raise_at is not None:
                fields.append(f"raise {self.raise_kind} in segment {self.raise_at}")
            if self.close_after is not None:
                fields.append(f"client closes after {self.close_after} chunks")
        return f"Program({'; '.join(fields)})"


#: Operations that send a statement (none may follow a caught statement error:
#: what a later statement does in an aborted PostgreSQL transaction is not a rule of this package).
DB_OPS = {"write", "read", "transient", "bad_commit"}


def _touches_db(op) -> bool:
    return isinstance(op, Block) or op[0] in DB_OPS


def _blocks(depth: int, readonly_parent: bool, own: bool):
    """Nested ``transaction()`` blocks (own=True: a @no_scope handler's independent transactions)."""
    inner = [st.just(("write",)), st.just(("read",)), st.just(("bad_commit",))] if not own else \
        [st.just(("write",)), st.just(("read",))]
    if own:
        inner += [st.sampled_from([("hook", "plain"), ("hook", "raise"), ("hook", "nest")]), st.just(("doom",))]

    @st.composite
    def block(draw):
        readonly = False if readonly_parent else draw(st.booleans())
        choices = list(inner)
        if depth < 2 and not readonly:
            choices.append(_blocks(depth + 1, readonly, own=False))
        ops = tuple(draw(st.lists(st.one_of(choices), max_size=4)))
        exit_ = draw(st.sampled_from(["normal", "raise", "dberror"]))
        if own and any(op[0] in ("hook", "doom") for op in ops if not isinstance(op, Block)):
            # What becomes of the hooks of a block that rolls back is undecided: such blocks end normally.
            exit_ = "normal"
        return Block(ops, exit_, draw(st.booleans()), readonly)

    return block()


def _top_ops(kind: str, isolation: str | None, xtm: bool, own_only: bool):
    if own_only:
        return _blocks(0, False, own=True)
    transient = ["locked"] if kind == "sqlite" else ["injected", "deadlock"]
    if kind != "sqlite" and isolation in ("REPEATABLE READ", "SERIALIZABLE"):
        transient.append("conflict")
    choices = [
        st.just(("write",)), st.just(("read",)),
        st.sampled_from([("hook", "plain"), ("hook", "raise"), ("hook", "nest")]),
        st.just(("doom",)), st.just(("caught_db_error",)), st.just(("bad_commit",)),
        st.sampled_from([("transient", t) for t in transient]),
        _blocks(0, False, own=False),
    ]
    if xtm:
        choices.append(st.sampled_from([("xtm", "commit"), ("xtm", "abort")]))
    return st.one_of(choices)


def _no_db_after_caught_error(parts: list[list]) -> list[tuple]:
    """Drop DB operations after a caught statement error, and every ``X-Tm`` but the first.

    Which of two ``X-Tm`` headers counts is undecided (this package reads the
    first, WebOb and so pyramid_tm the last).
    """
    seen = header = False
    out = []
    for ops in parts:
        kept = []
        for op in ops:
            if seen and _touches_db(op):
                continue
            if not isinstance(op, Block) and op[0] == "xtm":
                if header:
                    continue
                header = True
            kept.append(op)
            if not isinstance(op, Block) and op[0] == "caught_db_error":
                seen = True
        out.append(tuple(kept))
    return out


@st.composite
def programs(draw, kind: str):
    adapter = draw(st.sampled_from(["webpy", "webpy", "wsgi"]))
    attempts = draw(st.integers(1, 3))
    prior = draw(st.booleans())
    no_scope_ = adapter == "webpy" and draw(st.integers(0, 5)) == 0
    readonly = isolation = None
    if adapter == "webpy" and not no_scope_ and draw(st.integers(0, 3)) == 0:
        readonly = draw(st.booleans())
        isolation = draw(st.sampled_from([None, "READ COMMITTED", "REPEATABLE READ", "SERIALIZABLE"]))
    streaming = draw(st.booleans())
    ops = lambda xtm: st.lists(_top_ops(kind, isolation, xtm, no_scope_), max_size=5)  # noqa: E731
    prelude = draw(ops(True))
    if not streaming:
        ending = draw(st.sampled_from(ENDINGS if adapter == "webpy" else
                                      [e for e in ENDINGS if e != "interrupt"]))
        (prelude,) = _no_db_after_caught_error([prelude])
        return Program(adapter, attempts, prior, no_scope_, bool(readonly), isolation, prelude, ending)
    count = draw(st.integers(1, 3))
    # Headers are sent with the first chunk: X-Tm can only be set before it (web.py) or before start_response (WSGI).
    segments = [draw(ops(adapter == "webpy" and i == 0)) for i in range(count)]
    prelude, *segments = _no_db_after_caught_error([prelude] + segments)
    if adapter == "wsgi":
        # The middleware runs the first chunk before anything is sent, so it may retry a transient error
        # there, while README.org says streaming bodies are never retried: undecided, not generated.
        segments[0] = tuple(op for op in segments[0] if isinstance(op, Block) or op[0] != "transient")
    raise_at = raise_kind = close_after = None
    # A client that hangs up after the last chunk may or may not have let the server see the end of
    # the body (the scope reads one chunk ahead, so it commits before sending the last one): undecided,
    # so clients hang up while at least one chunk is still to come.
    end = draw(st.sampled_from(["exhaust", "raise", "close"] if count > 1 else ["exhaust", "raise"]))
    if end == "raise":
        raise_at = draw(st.integers(0, count - 1))
        kinds = ["crash"]
        if raise_at == 0 and adapter == "webpy":
            kinds += ["http:303", "http:302", "http:404", "http:400", "http:500", "http:503"]
        raise_kind = draw(st.sampled_from(kinds))
    elif end == "close":
        close_after = draw(st.integers(1, count - 1))
    status = draw(st.sampled_from([200, 200, 404, 503])) if adapter == "wsgi" else 200
    return Program(adapter, attempts, prior, no_scope_, bool(readonly), isolation, prelude, None,
                   tuple(segments), raise_at, raise_kind or "crash", close_after, status)


# -- the interpreter, shared by the real run and the model ----------------------------------------


class Boom(Exception):
    """A handler's own failure."""


def run_ops(ops, env) -> None:
    for op in ops:
        if isinstance(op, Block):
            try:
                with env.block(op.readonly):
                    run_ops(op.ops, env)
                    if op.exit == "raise":
                        raise Boom("the block raised")
                    if op.exit == "dberror":
                        env.bad_statement()
            except Exception:
                if not op.caught:
                    raise
        else:
            getattr(env, op[0])(*op[1:])


class _Tags:
    def __init__(self, rid: int, attempt: int):
        self.prefix = f"{rid}.{attempt}."
        self.count = itertools.count()

    def __call__(self, kind: str) -> str:
        return f"{kind}{self.prefix}{next(self.count)}"


# -- the model ------------------------------------------------------------------------------------


class ModelDBError(Exception):
    """A statement the database refuses."""


class ModelTransient(Exception):
    """A serialization failure or deadlock."""


@dataclasses.dataclass
class Frame:
    readonly: bool = False
    rows: list = dataclasses.field(default_factory=list)
    bad_commit: bool = False
    aborted: bool = False  # PostgreSQL: a statement failed, the transaction refuses everything until rolled back
    hooks: list = dataclasses.field(default_factory=list)
    doomed: bool = False


class ModelEnv:
    """What the rules say a handler's operations do, on lists instead of a database."""

    def __init__(self, kind: str, committed: list, fired: list, rid: int, attempt: int, readonly: bool,
                 scoped: bool = True, isolation: str | None = None):
        self.kind = kind
        # SQLite: the transaction holds the write lock (it wrote, or began with BEGIN IMMEDIATE).
        self.locked = False
        # BEGIN IMMEDIATE for both snapshot isolations; a read-only one begins deferred (_driver.begin_statements).
        self.immediate = kind == "sqlite" and isolation in ("REPEATABLE READ", "SERIALIZABLE") and not readonly
        self.committed = committed  # rows committed so far (own blocks of a @no_scope handler add to it)
        self.fired = fired
        self.attempt = attempt
        self.tag = _Tags(rid, attempt)
        self.frames = [Frame(readonly)] if scoped else []
        self.header = None  # the X-Tm value the handler set
        self.reads: list = []

    @property
    def scope(self) -> Frame:
        return self.frames[0]

    def _statement(self, write: bool = False) -> None:
        if any(f.aborted for f in self.frames):
            raise ModelDBError("current transaction is aborted")
        if write and self.frames[-1].readonly:
            self._refuse("read-only transaction")
        if (write or self.immediate) and self.kind == "sqlite":
            self.locked = True

    def _refuse(self, why: str) -> None:
        if self.kind != "sqlite":
            self.frames[-1].aborted = True
        raise ModelDBError(why)

    def write(self) -> None:
        tag = self.tag("r")
        self._statement(write=True)
        self.frames[-1].rows.append(tag)

    def read(self) -> None:
        self._statement()
        self.reads.append(len(self.committed) + sum(len(f.rows) for f in self.frames))

    def hook(self, kind: str) -> None:
        self.frames[-1].hooks.append((kind, self.tag("h")))

    def doom(self) -> None:
        self.frames[-1].doomed = True

    def xtm(self, value: str) -> None:
        self.header = value

    def caught_db_error(self) -> None:
        try:
            self.bad_statement()
        except ModelDBError:
            pass

    def bad_statement(self) -> None:
        self._statement()
        self._refuse("no such column")

    def transient(self, kind: str) -> None:
        if self.kind == "sqlite":
            # Another client holds the write lock, unless this transaction already does.
            if self.attempt == 1 and not self.locked:
                if self.frames[-1].readonly:
                    self._refuse("read-only transaction")
                raise ModelTransient(kind)
            self._statement(write=True)
            return
        self._statement(write=kind == "conflict")
        if self.attempt == 1:
            raise ModelTransient(kind)

    def bad_commit(self) -> None:
        self._statement(write=True)
        self.frames[-1].bad_commit = True

    @contextlib.contextmanager
    def block(self, readonly: bool):
        own = not self.frames  # a @no_scope handler's block is a transaction of its own
        if readonly and not own and not self.frames[0].readonly:
            # A transaction's read-only mode is fixed when it begins: a joined
            # block cannot have it, and must not pretend to (an error, not a write).
            raise ModelDBError("a read-only block joins a read-write transaction")
        frame = Frame(readonly or (not own and self.frames[-1].readonly))
        self.frames.append(frame)
        try:
            yield
        except BaseException:
            self.frames.pop()  # rolled back (to the savepoint, for a joined block)
            raise
        self.frames.pop()
        if own:
            if frame.doomed:
                return
            if frame.bad_commit or frame.aborted:
                raise ModelDBError("CommitFailed: the block's COMMIT was refused")
            self.committed.extend(frame.rows)
            fire_all(frame.hooks, self.fired)
            return
        parent = self.frames[-1]
        parent.rows.extend(frame.rows)
        parent.bad_commit |= frame.bad_commit
        parent.aborted |= frame.aborted
        parent.hooks.extend(frame.hooks)


def fire_all(hooks: list, fired: list) -> None:
    fired.extend(tag for _, tag in hooks)


@dataclasses.dataclass
class Outcome:
    """What a request looked like to its client, and what it did to the world.

    *status*: the status code, or ``"exc"`` when the application raised to the
    server (which answers 500 or drops the connection), or ``"exc:Name"`` for
    an exception that must propagate (``KeyboardInterrupt``).  *chunks*: the
    non-empty body chunks received.  *aborted*: iterating the body raised (the
    server aborts the response).
    """

    status: object
    chunks: list | None = None  # expected: None when the body is not part of the rule
    aborted: bool = False
    rows: list = dataclasses.field(default_factory=list)
    fired: list = dataclasses.field(default_factory=list)
    reads: list = dataclasses.field(default_factory=list)
    notes: list = dataclasses.field(default_factory=list)
    #: Expected only.  *truncated*: not a complete success, so any prefix of
    #: *chunks* may arrive.  *reads_ahead*: reads the next segment adds if it ran.
    truncated: bool = False
    reads_ahead: list = dataclasses.field(default_factory=list)


def _code(ending: str) -> int:
    return int(ending.split(":")[1])


def predict(program: Program, kind: str, committed: list, rid: int) -> tuple[Outcome, set]:
    """The outcome the rules require, and the set of statuses also acceptable in its place.

    Rules (README.org's table and issue 11):
    - commit on a normal return and on a redirect, 304 or 4xx, raised or not,
      streaming or not; roll back on any exception and on a raised 5xx, even
      with ``X-Tm: commit``; a returned 5xx rolls back unless ``X-Tm: commit``;
      ``X-Tm`` otherwise overrides the status; ``doom()`` always rolls back;
    - a failed COMMIT answers 500, and for a streamed body aborts it (the body
      raises); streaming bodies are never retried;
    - a transient error escaping the handler runs it again while attempts
      remain, whatever ``doom()`` and ``X-Tm`` say;
    - a ``transaction()`` block inside a request is a savepoint: if it raises,
      its writes are gone even when the handler catches the exception; a
      read-only block refuses writes, and joining a read-write transaction
      it raises at once (the mode is fixed when a transaction begins);
    - ``@no_scope`` handlers, streaming or not, run outside the request's
      scope: their own blocks commit on their own;
    - hooks run once each, in order, after a commit and never otherwise; one
      that raises or registers another does not stop the rest.
    """
    rows = list(committed)
    fired: list = []
    reads: list = []
    for attempt in range(1, program.attempts + 1):
        env = ModelEnv(kind, rows, fired, rid, attempt, program.readonly, scoped=not program.no_scope,
                       isolation=program.isolation)
        env.reads = reads
        try:
            run_ops(program.prelude, env)
        except ModelTransient:
            if attempt < program.attempts:
                continue
            return Outcome(_crash(program), rows=rows, fired=fired, reads=reads), set()
        except KeyboardInterrupt:
            raise
        except Exception:
            return Outcome(_crash(program), rows=rows, fired=fired, reads=reads), set()
        if program.segments is None:
            return _end_plain(program, env, rows, fired, reads)
        return _end_stream(program, env, rows, fired, reads)
    raise AssertionError("unreachable")


def _crash(program: Program):
    return 500 if program.adapter == "webpy" else "exc"


def _finish(program: Program, env: ModelEnv, status: int, raised: bool) -> str:
    """End the request's scope: ``commit``, ``rollback`` or ``failed``."""
    if program.no_scope:
        return "rollback"  # nothing to end: the handler's blocks ended themselves
    scope = env.scope
    if raised or scope.doomed:
        return "rollback"
    commit = env.header == "commit" if env.header else status < 500
    if not commit:
        return "rollback"
    if scope.bad_commit or scope.aborted:
        return "failed"
    env.committed.extend(scope.rows)
    fire_all(scope.hooks, env.fired)
    return "commit"


def _end_plain(program, env, rows, fired, reads):
    ending = program.ending
    out = Outcome(200, rows=rows, fired=fired, reads=reads)
    if ending == "interrupt":
        out.status = "exc:KeyboardInterrupt"
        return out, set()
    if ending == "crash":
        out.status = _crash(program)
        return out, set()
    if ending == "return":
        status, raised = 200, False
        out.chunks = [b"ok"]
    else:
        status = _code(ending)
        raised = ending.startswith("http:") and program.adapter == "webpy" and status >= 500
    result = _finish(program, env, status, raised)
    out.status = 500 if result == "failed" else status
    if result == "failed":
        out.chunks = None
    return out, set()


def _end_stream(program, env, rows, fired, reads):
    out = Outcome(program.status, [], rows=rows, fired=fired, reads=reads)
    for i, segment in enumerate(program.segments):
        try:
            run_ops(segment, env)
            if program.raise_at == i:
                raise Boom(program.raise_kind)
        except Exception as e:
            kind = str(e) if isinstance(e, Boom) else "crash"
            if i > 0:
                out.aborted = out.truncated = True  # the status line went out with the first chunk
                # ... unless the scope held the first chunk back until the next was known.
                return out, {"exc", 500} if i == 1 else set()
            if kind.startswith("http:"):
                out.chunks = None  # web.py sends the error's own body
                status = _code(kind)
                result = _finish(program, env, status, raised=status >= 500)
                if result == "failed":
                    out.status = 500
                    return out, {"exc"}  # a refused commit before the first chunk: 500 or an aborted answer
                out.status = status
                return out, set()
            out.status, out.chunks = "exc", None
            return out, set()
        out.chunks.append(f"c{i}".encode())
        if program.close_after == i + 1:
            # The client hung up before the body ended: rolled back.  A server (or
            # the scope, holding the last chunk back until COMMIT) may have run
            # the next segment already: its reads may show, and it may have raised.
            out.truncated, out.aborted = True, None
            if not program.no_scope:  # a body outside any scope is not read ahead
                reads, committed, fired = len(env.reads), len(env.committed), len(env.fired)
                try:
                    run_ops(program.segments[i + 1], env)
                except Exception:
                    if i == 0:  # raised while the first chunk was held back: nothing was sent yet
                        out.reads_ahead = env.reads[reads:]
                        del env.reads[reads:], env.committed[committed:], env.fired[fired:]
                        return out, {"exc", 500}
                out.reads_ahead = env.reads[reads:]
                del env.reads[reads:], env.committed[committed:], env.fired[fired:]
            return out, set()
    if _finish(program, env, program.status, raised=False) == "failed":
        out.aborted = out.truncated = True
        return out, {"exc", 500} if len(program.segments) == 1 else set()
    return out, set()


# -- the real handlers ----------------------------------------------------------------------------


class Run:
    """One request of the state machine, as the real handlers see it."""

    def __init__(self, program: Program, db: Database, rid: int, scope: txscope):
        self.program = program
        self.db = db
        self.rid = rid
        self.scope = scope
        self.attempt = 0
        self.fired: list = []
        self.reads: list = []
        self.notes: list = []


#: The run being served, by request id: handlers are looked up by their URL.
RUNS: dict[int, Run] = {}
_children = itertools.count(1)


class RealEnv:
    """The same operations, done with the package's public API and SQLObject."""

    def __init__(self, run: Run, headers: list | None = None):
        run.attempt += 1
        self.run = run
        self.attempt = run.attempt
        self.tag = _Tags(run.rid, run.attempt)
        self.headers = headers  # the WSGI app's response headers; None under web.py

    def write(self) -> None:
        ModelRow(tag=self.tag("r"))

    def read(self) -> None:
        self.run.reads.append(ModelRow.select().count())

    def hook(self, kind: str) -> None:
        on_commit(_fire, self.run, kind, self.tag("h"))

    def doom(self) -> None:
        doom()

    def xtm(self, value: str) -> None:
        if self.headers is None:
            web.header("X-Tm", value)
        else:
            self.headers.append(("X-Tm", value))

    def caught_db_error(self) -> None:
        try:
            self.bad_statement()
        except Exception:
            pass

    def bad_statement(self) -> None:
        sqlhub.getConnection().query("SELECT no_such_column FROM txscope_model_rows")

    def transient(self, kind: str) -> None:
        conn = sqlhub.getConnection()
        if kind == "conflict":
            # A real one: this transaction's snapshot predates another client's update of the row.
            conn.queryOne("SELECT v FROM txscope_model_conflict WHERE id = 1")
            if self.attempt == 1:
                self.run.db.execute("UPDATE txscope_model_conflict SET v = v + 1 WHERE id = 1")
            conn.query("UPDATE txscope_model_conflict SET v = v + 1 WHERE id = 1")
            return
        if self.run.db.kind == "sqlite":
            self._locked_out(conn)
            return
        if self.attempt != 1:
            return
        code = "serialization_failure" if kind == "injected" else "deadlock_detected"
        conn.query(f"DO $$ BEGIN RAISE EXCEPTION 'injected' USING ERRCODE = '{code}'; END $$")

    def _locked_out(self, conn) -> None:
        """A real "database is locked": another client holds the write lock past the busy timeout."""
        holding = False
        if self.attempt == 1:
            try:
                self.run.db.execute("BEGIN IMMEDIATE")
                holding = True
            except sqlite3.OperationalError:
                pass  # this request's transaction holds the lock itself: its write succeeds
        try:
            conn.query("UPDATE txscope_model_conflict SET v = v + 1 WHERE id = 1")
        finally:
            if holding:
                self.run.db.execute("ROLLBACK")

    def bad_commit(self) -> None:
        # A deferred foreign key: the statement succeeds, COMMIT fails.
        sqlhub.getConnection().query(
            f"INSERT INTO txscope_model_children (id, parent_id) VALUES ({next(_children)}, 999999)")

    def block(self, readonly: bool):
        return self.run.scope.transaction(readonly=True) if readonly else self.run.scope.transaction()

    def check_outside_scope(self, where: str) -> None:
        if current_scope() is not None:
            self.run.notes.append(f"@no_scope {where} ran inside a scope")


def _fire(run: Run, kind: str, tag: str) -> None:
    run.fired.append(tag)
    if kind == "raise":
        raise Boom("a hook failed")
    if kind == "nest":
        on_commit(_fire, run, "plain", tag + "+")


def _raise(ending: str):
    if ending == "crash":
        raise Boom("the handler crashed")
    if ending == "interrupt":
        raise KeyboardInterrupt
    code = _code(ending)
    raise {301: lambda: web.redirect("/elsewhere"), 302: lambda: web.found("/elsewhere"),
           303: lambda: web.seeother("/elsewhere"), 307: lambda: web.tempredirect("/elsewhere"),
           304: web.notmodified, 400: web.badrequest, 403: web.forbidden, 404: web.notfound,
           409: web.conflict, 410: web.gone, 500: web.internalerror,
           503: lambda: web.HTTPError(STATUS_LINES[503], {"Content-Type": "text/plain"}, "unavailable")}[code]()


def _webpy_handler(rid: str):
    run = RUNS[int(rid)]
    program = run.program
    web.header("Content-Type", "text/plain")
    env = RealEnv(run)
    if program.no_scope:
        env.check_outside_scope("handler")
    run_ops(program.prelude, env)
    if program.segments is not None:
        return _webpy_body(program, env)
    ending = program.ending
    if ending == "return":
        return "ok"
    if ending == "return:503":
        web.ctx.status = STATUS_LINES[503]
        return "unavailable"
    _raise(ending)


def _webpy_body(program: Program, env: RealEnv):
    for i, segment in enumerate(program.segments):
        if program.no_scope:
            env.check_outside_scope(f"body segment {i}")
        run_ops(segment, env)
        if program.raise_at == i:
            _raise(program.raise_kind)
        yield f"c{i}"


def _handler_class(name: str, decorate):
    def GET(self, rid):
        return _webpy_handler(rid)

    return type(name, (), {"GET": decorate(GET)})


ISOLATIONS = (None, "READ COMMITTED", "REPEATABLE READ", "SERIALIZABLE")


def _variant(program: Program) -> str:
    if program.no_scope:
        return "noscope"
    if program.readonly or program.isolation:
        return f"opts{int(program.readonly)}{ISOLATIONS.index(program.isolation)}"
    return "plain"


def _wsgi_app(environ, start_response):
    run = RUNS[int(environ["PATH_INFO"].rsplit("/", 1)[1])]
    program = run.program
    env = RealEnv(run, headers=[("Content-Type", "text/plain")])
    run_ops(program.prelude, env)
    if program.segments is not None:
        start_response(STATUS_LINES[program.status], env.headers)
        return _wsgi_body(program, env)
    ending = program.ending
    if ending == "crash":
        raise Boom("the application crashed")
    status = 200 if ending == "return" else _code(ending)
    headers = env.headers + ([("Location", "http://localhost/elsewhere")] if 300 <= status < 400 else [])
    start_response(STATUS_LINES[status], headers)
    return [b"ok"] if status == 200 else [b""]


def _wsgi_body(program: Program, env: RealEnv):
    for i, segment in enumerate(program.segments):
        run_ops(segment, env)
        if program.raise_at == i:
            _raise(program.raise_kind)
        yield f"c{i}".encode()


class Apps:
    """Per number of attempts: a txscope, a web.py app with it, and a WSGI app behind TxScopeMiddleware.

    With *db*'s ``cache`` set, every scope reads through that shared cache:
    the model stays the same, as the cache must change no answer.
    """

    def __init__(self, db: Database):
        self.scopes = {n: txscope(db.connection, attempts=n, retry_backoff=0, cache=db.cache) for n in (1, 2, 3)}
        self.webpy = {}
        self.wsgi = {}
        variants = {"plain": lambda fn: fn, "noscope": no_scope}
        for readonly in (0, 1):
            for i, isolation in enumerate(ISOLATIONS):
                if readonly or isolation:
                    variants[f"opts{readonly}{i}"] = scope_options(readonly=bool(readonly), isolation=isolation)
        urls, fvars = [], {}
        for name, decorate in variants.items():
            urls += [f"/{name}/(\\d+)", name]
            fvars[name] = _handler_class(name, decorate)
        for n, scope in self.scopes.items():
            app = web.application(tuple(urls), fvars)  # noqa: TXS101 - the processor is a variable, added below
            # Not web.py's debug page: slow, and it is not what a deployment answers.
            app.internalerror = lambda: web.HTTPError(STATUS_LINES[500], {"Content-Type": "text/plain"}, "error")
            app.add_processor(scope)
            self.webpy[n] = app.wsgifunc()
            self.wsgi[n] = TxScopeMiddleware(_wsgi_app, scope=scope)

    def serve(self, run: Run) -> Outcome:
        program = run.program
        if program.adapter == "webpy":
            app, path = self.webpy[program.attempts], f"/{_variant(program)}/{run.rid}"
        else:
            app, path = self.wsgi[program.attempts], f"/app/{run.rid}"
        RUNS[run.rid] = run
        try:
            return call(app, path, program.close_after)
        finally:
            del RUNS[run.rid]


def call(app, path: str, close_after: int | None) -> Outcome:
    """Serve one request as a WSGI server does: start, iterate, close, drop the body.

    Exceptions are reduced to their names at once: a server keeps no reference
    to a failed body (its traceback would keep the body alive).
    """
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": path, "SCRIPT_NAME": "", "QUERY_STRING": "",
               "SERVER_NAME": "localhost", "SERVER_PORT": "80", "SERVER_PROTOCOL": "HTTP/1.1",
               "wsgi.url_scheme": "http", "wsgi.input": io.BytesIO(b""), "wsgi.errors": io.StringIO(),
               "wsgi.version": (1, 0), "wsgi.multithread": False, "wsgi.multiprocess": False,
               "wsgi.run_once": False}
    started: list = []

    def start_response(status, headers, exc_info=None):
        started[:] = [status]
        return lambda data: None

    try:
        body = app(environ, start_response)
    except BaseException as e:  # noqa: B036 - a server answers every failure
        name = type(e).__name__
        return Outcome("exc:KeyboardInterrupt" if name == "KeyboardInterrupt" else "exc")
    out = Outcome(None, [])
    iterator = iter(body)
    while close_after is None or len(out.chunks) < close_after:
        try:
            chunk = next(iterator)
        except StopIteration:
            break
        except Exception:
            out.aborted = True
            break
        if chunk:
            out.chunks.append(chunk)
    close = getattr(body, "close", None)
    if close is not None:
        try:
            close()
        except Exception:
            out.notes.append("close() raised: too late to abort the response")
    del iterator, body
    out.status = int(started[0].split()[0]) if started else None
    return out
