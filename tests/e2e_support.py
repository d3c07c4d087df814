"""What the end-to-end tests share: the cookbook under mod_wsgi, its databases, load, faults, figures.

The cookbook app (app.py, models.py, cookbook/app.wsgi) runs under a real
mod_wsgi-express server (tests/modwsgi.py) with 3 daemon processes x 4
threads, on SQLite, PostgreSQL or MariaDB.  The server databases are called
``txscope_e2e`` and are dropped and made again once per test run, so these
tests never touch the ``txscope_test`` database of the other tests.

- `prepare` makes a database and the cookbook's table (``python models.py URI``,
  as the README says); `Database` looks at it from outside the app: rows,
  sessions, open transactions, and ends sessions (`SessionKiller`).
- `cookbook` serves the app on a database.
- `Load` is txscope-check's traffic made in this process, so that every answer
  is kept and judged: clients own rows, write fresh values, read them back and
  crash writes, and each answer is checked against what the row may hold.
- `TcpProxy` stands between the app and a database server to take the
  database away and give it back.
- `private_postgres` is a PostgreSQL server of the test's own
  (tests/pg_cluster.py): the tests that end its sessions or restart it never
  touch the machine's server on 5432, which other test runs share.
- `PrivateRedis` is a Redis server of the test's own, on a free port, that
  keeps nothing on disk: killing and starting it again is a restart that
  loses every key.  The machine's Redis on 6379 is never touched.
- `record` keeps the measured figures in tests/e2e_figures.json.

Nothing is skipped: a missing mod_wsgi venv or database server fails with the
command that fixes it.
"""

from __future__ import annotations

import contextlib
import fcntl
import http.client
import itertools
import json
import os
import re
import secrets
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from modwsgi import ModWsgiServer, give_to_www_data, serve, server_processes  # noqa: E402
from pg_cluster import PgCluster  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
WSGI_FILE = REPO / "cookbook" / "app.wsgi"
FIGURES_FILE = REPO / "tests" / "e2e_figures.json"
COMMAND = "python -m pytest -q -m e2e"

PROCESSES = 3
THREADS = 4
E2E_DB = "txscope_e2e"
KINDS = ("sqlite", "postgres", "mysql")
SERVER_KINDS = ("postgres", "mysql")
CSRF_SECRET = secrets.token_hex(32)

PG_ADMIN = dict(host="127.0.0.1", port=5432, user="postgres", dbname="postgres")
MY_ADMIN = dict(host="127.0.0.1", port=3306, user="root", password="")
PG_VERSION = sorted(os.listdir("/etc/postgresql"))[-1] if os.path.isdir("/etc/postgresql") else "15"
PG_CTL = ["pg_ctlcluster", "--skip-systemctl-redirect", PG_VERSION, "main"]
START = {
    "postgres": " ".join(PG_CTL + ["start"]),
    "mysql": "start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd",
}
LOCK_FILE = Path(tempfile.gettempdir()) / "txscope-e2e.lock"


# -- databases -------------------------------------------------------------------

# The app's sessions on the e2e database: (id, state, inside a transaction).
SESSIONS_SQL = {
    "postgres": "SELECT pid, state, xact_start IS NOT NULL FROM pg_stat_activity "
                "WHERE datname = %s AND pid <> pg_backend_pid() AND backend_type = 'client backend'",
    # A running statement of the app is always inside its transaction (the
    # scope turns autocommit off).  innodb_trx: see _fresh_trx_snapshot.
    "mysql": "SELECT p.id, p.command, t.trx_id IS NOT NULL OR p.command = 'Query' "
             "FROM information_schema.processlist p "
             "LEFT JOIN information_schema.innodb_trx t ON t.trx_mysql_thread_id = p.id "
             "WHERE p.db = %s AND p.id <> CONNECTION_ID() AND p.command <> 'Killed'",
}
_trx_read_at = 0.0


def _fresh_trx_snapshot() -> None:
    """Make the next read of innodb_trx show the transactions open now.

    InnoDB serves information_schema.innodb_trx from a cache that it refreshes
    only when nobody has read it for 0.1 s; polled faster, it shows the same
    old snapshot forever.
    """
    global _trx_read_at
    time.sleep(max(0.0, _trx_read_at + 0.11 - time.monotonic()))
    _trx_read_at = time.monotonic()


@dataclass(frozen=True)
class Session:
    """One database session of the app, seen from outside."""

    id: int
    state: str
    in_transaction: bool


class Database:
    """The e2e database of one kind, as another process sees it.

    `kind` is sqlite, postgres or mysql; `name` adds the app's driver when it
    is not the default one (postgres-psycopg2, mysql-pymysql).
    """

    def __init__(self, name: str, uri: str, path: Path | None = None, port: int | None = None):
        self.name = name
        self.kind = name.split("-")[0]
        self.uri = uri
        self.path = path
        self.port = port  # a server's port; None: the machine's

    def __repr__(self) -> str:
        return self.name

    def connect(self):
        """A DB-API connection to the e2e database in autocommit, never the app's."""
        if self.kind == "sqlite":
            # Read-only: a root-owned journal would lock www-data out.
            return sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=10, isolation_level=None)
        if self.kind == "postgres":
            import psycopg2

            conn = psycopg2.connect(**dict(PG_ADMIN, dbname=E2E_DB, port=self.port or PG_ADMIN["port"]))
            conn.autocommit = True
            return conn
        import pymysql

        return pymysql.connect(database=E2E_DB, autocommit=True, **MY_ADMIN)

    def query(self, sql: str, *params) -> list[tuple]:
        conn = self.connect()
        try:
            cur = conn.cursor()
            cur.execute(sql if self.kind == "sqlite" else sql.replace("?", "%s"), params)
            return list(cur.fetchall()) if cur.description else []
        finally:
            conn.close()

    def users(self) -> dict[int, tuple[str, str, str]]:
        """Every row of the cookbook's table: id -> (name, fullname, password hash)."""
        return {row[0]: tuple(row[1:]) for row in self.query("SELECT id, name, fullname, password FROM users")}

    def sessions(self) -> list[Session]:
        """The app's sessions on the e2e database (PostgreSQL and MariaDB)."""
        if self.kind == "sqlite":
            raise ValueError("SQLite has no sessions to list; see sqlite_connections()")
        if self.kind == "mysql":
            _fresh_trx_snapshot()
        rows = self.query(SESSIONS_SQL[self.kind].replace("%s", "?"), E2E_DB)
        return [Session(int(pid), str(state), bool(in_tx)) for pid, state, in_tx in rows]

    def sqlite_connections(self, server: ModWsgiServer) -> int:
        """How many open SQLite connections the server's processes hold (open file descriptors)."""
        count = 0
        for pid in server_processes(server.server_root):
            with contextlib.suppress(FileNotFoundError, PermissionError):
                for fd in Path(f"/proc/{pid}/fd").iterdir():
                    with contextlib.suppress(FileNotFoundError):
                        if os.readlink(fd) == str(self.path):
                            count += 1
        return count


_prepared: set[tuple[str, int | None]] = set()
_lock_file = None


def _hold_e2e_lock(timeout: float = 900.0) -> None:
    """Serialize end-to-end runs on this machine: they share txscope_e2e and its rows."""
    global _lock_file
    if _lock_file is not None:
        return
    handle = open(LOCK_FILE, "a")
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() > deadline:
                pytest.fail(f"another end-to-end run held {LOCK_FILE} for {timeout:.0f} s", pytrace=False)
            time.sleep(0.5)
    _lock_file = handle  # held until this process exits


def prepare(name: str, data_dir: Path | None = None, *, port: int | None = None) -> Database:
    """The e2e database `name` (see `Database`) with the cookbook's table and sample users.

    PostgreSQL and MariaDB databases are dropped and made again the first
    time in a test run; SQLite lives in `data_dir` (a folder www-data owns).
    The app connects with the default driver (psycopg, mysqlclient) unless
    `name` says otherwise.  `port`: a PostgreSQL server of the test's own
    (see `private_postgres`) instead of the machine's.
    """
    _hold_e2e_lock()
    kind, _, driver = name.partition("-")
    if kind == "sqlite":
        path = data_dir / "app.db"
        database = Database(name, f"sqlite:{path}", path)
    elif kind == "postgres":
        host = f"127.0.0.1:{port}" if port else "127.0.0.1"
        database = Database(name, f"postgres://postgres@{host}/{E2E_DB}", port=port)
    else:
        database = Database(name, f"mysql://root@127.0.0.1/{E2E_DB}")
    if driver:
        database.uri += f"?driver={driver}"
    if (kind, port) not in _prepared and kind != "sqlite":
        _recreate(kind, port)
        _prepared.add((kind, port))
    done = subprocess.run([sys.executable, "models.py", database.uri], cwd=REPO, capture_output=True, text=True)
    if done.returncode:
        pytest.fail(f"python models.py {database.uri} failed:\n{done.stdout}{done.stderr}", pytrace=False)
    if database.path is not None:
        give_to_www_data(database.path)
    return database


def _recreate(kind: str, port: int | None = None) -> None:
    with admin_connection(kind, port) as conn:
        cur = conn.cursor()
        if kind == "postgres":
            cur.execute(f"DROP DATABASE IF EXISTS {E2E_DB} WITH (FORCE)")
            cur.execute(f"CREATE DATABASE {E2E_DB}")
        else:
            cur.execute(f"DROP DATABASE IF EXISTS {E2E_DB}")
            cur.execute(f"CREATE DATABASE {E2E_DB} CHARACTER SET utf8mb4")


@contextlib.contextmanager
def admin_connection(kind: str, port: int | None = None):
    """An autocommit connection to the server (the machine's, or the one on `port`), outside the e2e
    database; fails with how to start it."""
    if kind == "postgres":
        import psycopg2

        try:
            conn = psycopg2.connect(**dict(PG_ADMIN, port=port or PG_ADMIN["port"]))
        except psycopg2.OperationalError as e:
            pytest.fail(f"PostgreSQL is not reachable on 127.0.0.1:{port or PG_ADMIN['port']} ({e}); "
                        f"start it with: {START[kind]}", pytrace=False)
        conn.autocommit = True
    else:
        import pymysql

        try:
            conn = pymysql.connect(autocommit=True, **MY_ADMIN)
        except pymysql.err.OperationalError as e:
            pytest.fail(f"MariaDB is not reachable on 127.0.0.1:3306 ({e}); start it with: {START[kind]}",
                        pytrace=False)
    try:
        yield conn
    finally:
        conn.close()


class SessionKiller:
    """Ends the app's sessions from outside: ``pg_terminate_backend`` or MariaDB's ``KILL``.

    Its own connection is not on the e2e database, so it never ends itself.
    """

    def __init__(self, kind: str, port: int | None = None):
        self.kind = kind
        self._conn_cm = admin_connection(kind, port)
        self._cur = self._conn_cm.__enter__().cursor()
        self.killed = 0
        self.killed_in_transaction = 0

    def close(self) -> None:
        self._conn_cm.__exit__(None, None, None)

    def sessions(self) -> list[Session]:
        if self.kind == "mysql":
            _fresh_trx_snapshot()
        self._cur.execute(SESSIONS_SQL[self.kind], (E2E_DB,))
        return [Session(int(pid), str(state), bool(in_tx)) for pid, state, in_tx in self._cur.fetchall()]

    def kill(self, which: Callable[[Session], bool] = lambda session: True) -> list[Session]:
        """End the app's sessions that `which` selects; return those ended."""
        ended = [session for session in self.sessions() if which(session) and self._end(session.id)]
        self.killed += len(ended)
        self.killed_in_transaction += sum(s.in_transaction for s in ended)
        return ended

    def _end(self, session_id: int) -> bool:
        if self.kind == "postgres":
            self._cur.execute("SELECT pg_terminate_backend(%s)", (session_id,))
            return bool(self._cur.fetchone()[0])
        import pymysql

        try:
            self._cur.execute(f"KILL {int(session_id)}")
        except pymysql.err.OperationalError as e:
            if e.args[0] == 1094:  # unknown thread id: it ended by itself meanwhile
                return False
            raise
        return True

    def wait_gone(self, ended: list[Session], timeout: float = 10.0) -> None:
        """Poll until none of the `ended` sessions is listed any more."""
        ids = {s.id for s in ended}
        deadline = time.monotonic() + timeout
        while ids & {s.id for s in self.sessions()}:
            if time.monotonic() > deadline:
                raise AssertionError(f"sessions {sorted(ids)} still listed {timeout} s after being ended")
            time.sleep(0.02)


@contextlib.contextmanager
def private_postgres() -> Iterator[PgCluster]:
    """A PostgreSQL server of the test's own, on a free port, removed afterwards (see tests/pg_cluster.py).

    For the tests that end every session of the server or restart it: the
    machine's server is shared with every other test run on this machine.
    """
    with PgCluster(dbname=E2E_DB) as cluster:
        yield cluster


def wait_for(condition: Callable[[], object], timeout: float, what: str, interval: float = 0.02):
    """Poll `condition` until it returns something true; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


# -- the served cookbook -----------------------------------------------------------


@dataclass
class Cookbook:
    """The cookbook app being served: its URL and its Apache error log."""

    server: ModWsgiServer
    database: Database

    @property
    def url(self) -> str:
        return self.server.url

    def log_size(self) -> int:
        return len(self.server.log_text())

    def log_since(self, offset: int) -> str:
        return self.server.log_text()[offset:]

    def call(self, method: str, path: str, payload=None, **options) -> "Answer":
        return call(self.url, method, path, payload, **options)

    def create_users(self, count: int, prefix: str) -> list[dict]:
        """Create `count` users through the API (concurrently); return their JSON."""
        def create(n: int) -> dict:
            answer = self.call("POST", "/api/users",
                               {"name": f"{prefix}{n}", "fullname": f"{prefix}{n} created", "password": "e2e-password"})
            assert answer.status == 201, f"creating user {prefix}{n}: {answer}"
            return answer.json()

        with _pool(min(count, 8)) as pool:
            return list(pool.map(create, range(count)))

    def worker_stats(self, timeout: float = 30.0) -> dict[str, dict]:
        """/api/stats from every daemon process (see :func:`worker_stats`)."""
        return worker_stats(self.url, "/api/stats", timeout)


def worker_stats(url: str, path: str, timeout: float = 30.0) -> dict[str, dict]:
    """The stats at `path` from every daemon process, keyed by the "worker" each names.

    Asked one request at a time: a stats request is a request, so two of them
    served at once by one process would each count the other's scope as open,
    and a leak test would see a leak that is only its own probe.
    """
    seen: dict[str, dict] = {}

    def all_seen():
        for _ in range(PROCESSES * THREADS):
            answer = call(url, "GET", path)
            assert answer.status == 200, answer
            seen[str(answer.json()["worker"])] = answer.json()
        return len(seen) >= PROCESSES

    wait_for(all_seen, timeout, f"{path} answers from {PROCESSES} worker processes", interval=0)
    return seen


def _pool(workers: int):
    from concurrent.futures import ThreadPoolExecutor

    return ThreadPoolExecutor(workers)


@contextlib.contextmanager
def cookbook(database: Database, *, enabled: bool = True, uri: str | None = None) -> Iterator[Cookbook]:
    """Serve cookbook/app.wsgi on `database` (or `uri`), 3 processes x 4 threads."""
    env = {"TXSCOPE_DATABASE_URI": uri or database.uri, "TXSCOPE_CSRF_SECRET": CSRF_SECRET}
    if not enabled:
        env["TXSCOPE_ENABLED"] = "0"
    with tempfile.TemporaryDirectory(prefix="txscope-cookbook-") as name:
        lib = Path(name) / "cookbook"
        lib.mkdir()
        for module in ("app.py", "models.py"):
            shutil.copy(REPO / module, lib / module)
        with serve(WSGI_FILE, processes=PROCESSES, threads=THREADS, env=env, python_path=[lib]) as server:
            yield Cookbook(server, database)


# -- HTTP ----------------------------------------------------------------------------


class NoAnswer(Exception):
    """A request got no HTTP answer at all."""


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self):
        return json.loads(self.body)

    def __str__(self) -> str:
        return f"{self.status} {self.body[:200]!r}"


def call(url: str, method: str, path: str, payload=None, *, body: bytes | None = None,
         content_type: str | None = None, headers: dict | None = None, timeout: float = 15.0) -> Answer:
    """One request on a new connection (so that requests spread over the daemon processes)."""
    parts = urllib.parse.urlsplit(url)
    send = {"Connection": "close", **(headers or {})}
    if payload is not None:
        body = json.dumps(payload).encode()
        content_type = content_type or "application/json"
    if content_type:
        send["Content-Type"] = content_type
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=send)
        response = conn.getresponse()
        data = response.read()
    except (OSError, http.client.HTTPException) as e:
        raise NoAnswer(f"{method} {path}: {type(e).__name__}: {e}") from e
    finally:
        conn.close()
    return Answer(response.status, {k.lower(): v for k, v in response.getheaders()}, data)


def checker(url: str, *options: str) -> dict:
    """Run txscope-check (this work tree's) against `url`; return its --json summary."""
    done = subprocess.run(
        [sys.executable, "-m", "webpy_txscope.check", url, "--json", "--quiet", *options],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    lines = done.stdout.strip().splitlines()
    try:
        numbers = json.loads(lines[-1])
    except (IndexError, ValueError):
        raise AssertionError(f"txscope-check gave no JSON summary (exit {done.returncode}):\n"
                             f"{done.stdout}\n{done.stderr}") from None
    numbers["exit_status"] = done.returncode
    numbers["report"] = done.stdout
    return numbers


# -- load ----------------------------------------------------------------------------

OK_STATUS = {"read": 200, "write": 200, "crash": 500}
FAULT_STATUSES = (500, 503)
# The rules a load checks; Load.violations lists what broke each.
LOST = "acknowledged write lost"
LEAKED = "write of a failed request seen"
WRONG_ANSWER = "answer neither as the handler gives it nor 500/503"


@dataclass
class Row:
    """A row one client owns: the values it may hold, and values it must never hold."""

    id: int
    possible: set[str]
    forbidden: set[str] = field(default_factory=set)


@dataclass(frozen=True)
class Outcome:
    kind: str  # read, write or crash
    status: int | None  # None: no HTTP answer
    started: float
    ended: float
    retry_after: bool


class Load:
    """txscope-check's traffic, every answer kept and judged.

    Each client thread owns some rows and cycles through `pattern`: a *write*
    sends a fresh value, a *read* reads a row back, a *crash* asks the app to
    write a value and then fail.  What a row may hold follows from the answers:

    - a write answered 200 is acknowledged: it is the only value the row may
      hold, until the next write;
    - a write answered 503 (the scope rolled it back) and every crash value
      must never be seen;
    - a write answered 500 may or may not have been kept (COMMIT failed, and
      the server may have committed before the connection broke), so both
      values are possible until a read says which.

    A read that finds anything else breaks a rule (`LOST` or `LEAKED`), and so
    does any answer but the handler's own or a 500 or 503 (`WRONG_ANSWER`).
    The rows are checked once more, in the database itself, by `verify`.
    """

    def __init__(self, url: str, users: list[dict], clients: int, pattern: tuple[str, ...], prefix: str):
        self.url = url
        self.pattern = pattern
        self.prefix = prefix
        self.rows = [Row(u["id"], {u["fullname"]}) for u in users]
        self.clients = [self.rows[n::clients] for n in range(clients)]
        assert all(self.clients), "every client needs a row of its own"
        self.outcomes: list[Outcome] = []
        self.violations: dict[str, list[str]] = {LOST: [], LEAKED: [], WRONG_ANSWER: []}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._serial = itertools.count()
        self._threads: list[threading.Thread] = []
        self._errors: list[BaseException] = []

    # -- driving ---------------------------------------------------------------

    def run(self, requests_per_client: int) -> None:
        """Make exactly `requests_per_client` requests per client, then return."""
        self.start(requests_per_client)
        self.join()

    def start(self, requests_per_client: int | None = None) -> None:
        for rows in self.clients:
            thread = threading.Thread(target=self._client, args=(rows, requests_per_client), daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()
        self.join()

    def join(self) -> None:
        for thread in self._threads:
            thread.join(120)
            assert not thread.is_alive(), "a load client did not finish"
        if self._errors:
            raise self._errors[0]

    @property
    def done(self) -> int:
        return len(self.outcomes)

    def wait_done(self, count: int, timeout: float = 120.0) -> None:
        """Poll until `count` requests in all were answered."""
        wait_for(lambda: self.done >= count or self._errors, timeout, f"{count} requests to be answered")
        if self._errors:
            raise self._errors[0]

    def _client(self, rows: list[Row], limit: int | None) -> None:
        try:
            steps = range(limit) if limit is not None else itertools.count()
            for step in steps:
                if self._stop.is_set():
                    return
                row = rows[step % len(rows)]
                kind = self.pattern[(step // len(rows)) % len(self.pattern)]
                getattr(self, "_" + kind)(row)
        except BaseException as e:  # noqa: B902 - reported by join()
            self._errors.append(e)

    # -- one request each ------------------------------------------------------

    def _send(self, kind: str, method: str, path: str, payload=None) -> Answer | None:
        started = time.monotonic()
        try:
            answer = call(self.url, method, path, payload)
        except NoAnswer as e:
            self._keep(Outcome(kind, None, started, time.monotonic(), False))
            self._violation(WRONG_ANSWER, f"{kind} {path}: no answer: {e}")
            return None
        self._keep(Outcome(kind, answer.status, started, time.monotonic(), "retry-after" in answer.headers))
        if answer.status not in (OK_STATUS[kind], *FAULT_STATUSES):
            self._violation(WRONG_ANSWER, f"{kind} {path} answered {answer}")
        return answer

    def _keep(self, outcome: Outcome) -> None:
        with self._lock:
            self.outcomes.append(outcome)

    def _violation(self, rule: str, text: str) -> None:
        with self._lock:
            self.violations[rule].append(text)

    def broken(self) -> list[str]:
        """Every violation of every rule."""
        return [f"{rule}: {text}" for rule, texts in self.violations.items() for text in texts]

    def _value(self, row: Row, kind: str) -> str:
        return f"{self.prefix}-{row.id}-{kind}{next(self._serial)}"

    def _write(self, row: Row) -> None:
        value = self._value(row, "w")
        answer = self._send("write", "POST", f"/api/users/{row.id}", {"fullname": value})
        if answer is None:
            row.possible.add(value)
        elif answer.status == 200:
            got = answer.json().get("fullname")
            if got != value:
                self._violation(LOST, f"write of row {row.id} acknowledged {got!r}, sent {value!r}")
            row.possible = {value}
        elif answer.status == 503:
            row.forbidden.add(value)
        else:
            row.possible.add(value)

    def _crash(self, row: Row) -> None:
        value = self._value(row, "crash")
        row.forbidden.add(value)
        self._send("crash", "POST", f"/api/users/{row.id}/crash", {"fullname": value})

    def _read(self, row: Row) -> None:
        answer = self._send("read", "GET", f"/api/users/{row.id}")
        if answer is not None and answer.status == 200:
            self.judge(row, answer.json().get("fullname"), "read")

    def judge(self, row: Row, got: str, where: str) -> None:
        """Check one value of `row` seen by a read or in the database."""
        if got in row.possible:
            row.possible = {got}
        elif got in row.forbidden:
            self._violation(LEAKED, f"{where} of row {row.id}: {got!r}, written by a failed request")
        else:
            self._violation(LOST, f"{where} of row {row.id}: {got!r}, expected one of {sorted(row.possible)}")

    def verify(self, database: Database) -> None:
        """Judge every row's value in the database itself (after the load stopped)."""
        values = database.users()
        for row in self.rows:
            self.judge(row, values[row.id][1], "the database's copy")

    # -- what happened -----------------------------------------------------------

    def statuses(self, kind: str | None = None) -> dict[str, int]:
        counts = Counter(str(o.status or "no answer") for o in self.outcomes if kind in (None, o.kind))
        return dict(sorted(counts.items()))

    def failed(self, outcomes=None) -> list[Outcome]:
        """Requests that did not get the answer their handler gives without faults."""
        return [o for o in (self.outcomes if outcomes is None else outcomes) if o.status != OK_STATUS[o.kind]]

    def started_after(self, moment: float) -> list[Outcome]:
        return [o for o in self.outcomes if o.started >= moment]

    def figures(self) -> dict:
        return {
            "requests": self.done,
            "requests_failed": len(self.failed()),
            "statuses": {kind: self.statuses(kind) for kind in ("read", "write", "crash")},
            "writes_acknowledged": sum(o.kind == "write" and o.status == 200 for o in self.outcomes),
            "writes_lost": len(self.violations[LOST]),
            "writes_of_failed_requests_seen": len(self.violations[LEAKED]),
            "wrong_answers": len(self.violations[WRONG_ANSWER]),
        }


# -- a TCP proxy, to take a database server away and give it back ----------------------


class TcpProxy:
    """Forwards 127.0.0.1:`port` to a database server while open.

    While closed its port is bound but not listening, so connections are
    refused at once (as when the server is down), and no one else takes the
    port.  Closing also cuts every connection that passes through it.
    """

    def __init__(self, target_port: int):
        self.target = ("127.0.0.1", target_port)
        self._listener = self._bind(0)
        self.port = self._listener.getsockname()[1]
        self._pairs: list[socket.socket] = []
        self._lock = threading.Lock()
        self._accepting: threading.Thread | None = None
        self._open = threading.Event()

    @staticmethod
    def _bind(port: int) -> socket.socket:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        return sock

    def open(self) -> None:
        self._listener.listen(64)
        self._listener.settimeout(0.05)
        self._open.set()
        self._accepting = threading.Thread(target=self._accept, args=(self._listener,), daemon=True)
        self._accepting.start()

    def close(self) -> None:
        """Stop accepting and cut every connection; return when that is done."""
        self._open.clear()
        if self._accepting is not None:
            self._accepting.join(5)
            self._accepting = None
        self._listener.close()
        self._listener = self._bind(self.port)
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for sock in pairs:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def _accept(self, listener: socket.socket) -> None:
        while self._open.is_set():
            try:
                client, _ = listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            client.settimeout(None)
            upstream.settimeout(None)
            with self._lock:
                self._pairs += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                sink.sendall(data)
        except OSError:
            pass
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)


# -- a Redis of the test's own ---------------------------------------------------------

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


class PrivateRedis:
    """A redis-server on a free 127.0.0.1 port that keeps nothing on disk.

    `kill` ends it at once (SIGKILL: no goodbye to its clients) and `start`
    brings it back on the same port, empty; use it as a context manager to
    start it and to kill it at the end.
    """

    def __init__(self) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self._dir = tempfile.TemporaryDirectory(prefix="txscope-redis-")
        self._process: subprocess.Popen | None = None
        self.log = Path(self._dir.name) / "redis.log"

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def __enter__(self) -> "PrivateRedis":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.kill()
        self._dir.cleanup()

    def client(self):
        import redis

        return redis.Redis(port=self.port, socket_timeout=2, socket_connect_timeout=2)

    def start(self, timeout: float = 10.0) -> None:
        if not os.access(REDIS_SERVER, os.X_OK):
            pytest.fail(f"{REDIS_SERVER} not found: apt-get install redis-server", pytrace=False)
        self._process = subprocess.Popen(
            [REDIS_SERVER, "--bind", "127.0.0.1", "--port", str(self.port), "--save", "", "--appendonly", "no",
             "--dir", self._dir.name, "--logfile", str(self.log)],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        import redis

        deadline = time.monotonic() + timeout
        while True:
            try:
                with self.client() as client:
                    client.ping()
                return
            except redis.RedisError as e:  # refused until it listens
                if time.monotonic() > deadline or self._process.poll() is not None:
                    self.kill()
                    log = self.log.read_text(errors="replace") if self.log.exists() else ""
                    pytest.fail(f"redis-server on port {self.port} did not start ({e}):\n{log}", pytrace=False)
            time.sleep(0.05)

    def kill(self) -> None:
        if self._process is not None:
            self._process.kill()
            self._process.wait(10)
            self._process = None


# -- the Apache error log ---------------------------------------------------------------

# "[Mon Nov 23 08:38:29.230266 2026] [wsgi:error] [pid ...] ..." : module and level.
LOG_LEVEL = re.compile(r"^\[[^\]]+\] \[(?P<module>[^:\]]*):(?P<level>\w+)\]", re.M)
ERROR_LEVELS = ("error", "crit", "alert", "emerg")


def error_lines(log: str) -> list[str]:
    """The lines of an Apache error log written at error level or worse."""
    return [line for line in log.splitlines()
            if (m := LOG_LEVEL.match(line)) and m["level"] in ERROR_LEVELS]


# -- figures ------------------------------------------------------------------------------

FIGURES: dict = {}


def record(section: str, key: str, figures: dict) -> None:
    """Keep one test's measured figures; rewrite tests/e2e_figures.json with all of this run's.

    The file is rewritten after every test that measures something, so at the
    end of a run it holds that run's figures, the totals first.
    """
    FIGURES.setdefault(section, {})[key] = figures
    document = {
        "command": COMMAND,
        "server": f"mod_wsgi-express, {PROCESSES} daemon processes x {THREADS} threads, 127.0.0.1",
        "written": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "totals": totals(FIGURES),
        **FIGURES,
    }
    FIGURES_FILE.write_text(json.dumps(document, indent=2) + "\n")


def totals(figures: dict) -> dict:
    """The headline numbers over every database and test of a run."""
    def total(section: str, field: str, where=lambda key: True) -> int:
        return sum(v.get(field, 0) for k, v in figures.get(section, {}).items() if where(k))

    on, off = (lambda k: k.endswith("processor on")), (lambda k: k.endswith("processor off"))
    loads = ("faults", "leaks")
    return {
        "checks_with_processor": total("stale_reads", "checks", on),
        "stale_reads_with_processor": total("stale_reads", "stale_reads", on),
        "checks_without_processor": total("stale_reads", "checks", off),
        "stale_reads_without_processor": total("stale_reads", "stale_reads", off),
        "faults_injected": sum(total("faults", f) for f in (
            "backends_terminated", "server_restarts", "connections_killed_inside_a_transaction"))
        + total("idle_connection_killed", "connections_ended_while_idle")
        + total("database_unreachable", "outages"),
        "requests_under_faults": total("faults", "requests"),
        "requests_failed_under_faults": total("faults", "requests_failed"),
        "requests_failed_in_the_handler": total("leaks", "failed_in_the_handler")
        + total("stale_reads", "crash_writes", on),
        "writes_acknowledged": sum(total(s, "writes_acknowledged") for s in loads),
        "writes_lost": sum(total(s, "writes_lost") for s in loads) + total("stale_reads", "lost_writes", on),
        "writes_of_failed_requests_seen": sum(total(s, "writes_of_failed_requests_seen") for s in loads)
        + total("stale_reads", "leaked_crash_writes", on),
    }
