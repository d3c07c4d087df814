"""A private PostgreSQL 15 cluster for the tests: one primary and N streaming replicas.

The machine's own PostgreSQL (127.0.0.1:5432) is shared by every test run on
it and has no ``replication`` line in its ``pg_hba.conf``; tests that restart a
server, end its sessions or need replicas make their own cluster instead:

>>> with PgCluster(replicas=2) as cluster:               # doctest: +SKIP
...     cluster.primary.sql("CREATE TABLE t (x int)")
...     cluster.pause(cluster.replicas[0])               # a replica that lags for sure

Everything lives in a temporary folder owned by the ``postgres`` user
(``initdb`` refuses to run as root), on free ports, with ``fsync = off``; it is
stopped (``pg_ctl -m immediate``) and removed on every path out, failures
included.  A cluster starts in about a second per server.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

BIN = Path(os.environ.get("TXSCOPE_PG_BIN", "/usr/lib/postgresql/15/bin"))
OWNER = "postgres"
INSTALL_HINT = "apt-get install -y postgresql-15 (the tests run initdb, pg_ctl and pg_basebackup from it)"


def free_port() -> int:
    """A TCP port nobody listens on right now (the kernel picks it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def as_owner(*command: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run a PostgreSQL program as ``postgres`` (they refuse root)."""
    if os.geteuid() == 0:
        command = ("runuser", "-u", OWNER, "--", *command)
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    if check and done.returncode:
        raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}):\n{done.stdout}{done.stderr}")
    return done


def private_dir(prefix: str) -> Path:
    """A new temporary folder the ``postgres`` user owns (short: it holds Unix sockets)."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    if os.geteuid() == 0:
        user = pwd.getpwnam(OWNER)
        os.chown(path, user.pw_uid, user.pw_gid)
    return path


@dataclass
class Node:
    """One server of the cluster."""

    name: str
    port: int
    data: Path
    log: Path
    dbname: str = "test"  # the cluster's database: the default of the methods below

    def uri(self, dbname: str | None = None, driver: str | None = None) -> str:
        uri = f"postgres://postgres@127.0.0.1:{self.port}/{dbname or self.dbname}"
        return f"{uri}?driver={driver}" if driver else uri

    def connect(self, dbname: str | None = None):
        """A psycopg2 connection in autocommit, from outside the application."""
        import psycopg2

        conn = psycopg2.connect(host="127.0.0.1", port=self.port, user="postgres", dbname=dbname or self.dbname,
                                connect_timeout=5)
        conn.autocommit = True
        return conn

    def sql(self, statement: str, *params, dbname: str | None = None) -> list[tuple]:
        conn = self.connect(dbname)
        try:
            cur = conn.cursor()
            cur.execute(statement, params)
            return cur.fetchall() if cur.description else []
        finally:
            conn.close()

    def is_up(self) -> bool:
        done = subprocess.run([str(BIN / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(self.port)])
        return done.returncode == 0


class PgCluster:
    """A primary and *replicas* streaming replicas, each on a free port.

    *apply_delay* (for example ``"300ms"``) sets ``recovery_min_apply_delay``
    on every replica: a real replay delay, as a busy replica has.  The
    database *dbname* exists on every server.
    """

    def __init__(self, replicas: int = 0, *, apply_delay: str | None = None, dbname: str = "test",
                 settings: dict[str, str] | None = None):
        self.dbname = dbname
        self.apply_delay = apply_delay
        self.settings = dict(settings or {})
        self.replica_count = replicas
        self.root: Path | None = None
        self.primary: Node | None = None
        self.replicas: list[Node] = []
        self._running: list[Node] = []

    # -- lifecycle -------------------------------------------------------------------

    def __enter__(self) -> "PgCluster":
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        if not (BIN / "initdb").exists():
            raise RuntimeError(f"no PostgreSQL binaries in {BIN}: {INSTALL_HINT}")
        self.root = private_dir("txscope-pg-")
        self.primary = self._node("primary")
        as_owner(str(BIN / "initdb"), "-D", str(self.primary.data), "-U", "postgres", "-A", "trust",
                 "--no-sync", "-E", "UTF8", "--locale", "C")
        self._configure(self.primary, {
            "wal_level": "replica", "max_wal_senders": "10", "hot_standby": "on",
            "wal_keep_size": "64MB", **self.settings})
        with open(self.primary.data / "pg_hba.conf", "a") as hba:
            hba.write("host replication all 127.0.0.1/32 trust\n")
        self.start_node(self.primary)
        self.primary.sql(f"CREATE DATABASE {self.dbname}", dbname="postgres")
        for n in range(self.replica_count):
            self.add_replica(f"replica{n + 1}")

    def add_replica(self, name: str) -> Node:
        node = self._node(name)
        as_owner(str(BIN / "pg_basebackup"), "-h", "127.0.0.1", "-p", str(self.primary.port), "-U", "postgres",
                 "-D", str(node.data), "-R", "-X", "stream", "-c", "fast", "--no-sync")
        options = {"hot_standby": "on", "hot_standby_feedback": "on"}
        if self.apply_delay:
            options["recovery_min_apply_delay"] = f"'{self.apply_delay}'"
        self._configure(node, options)
        self.start_node(node)
        self.replicas.append(node)
        return node

    def stop(self) -> None:
        """Stop every server that runs and remove the folder; never raises for a server already gone."""
        for node in reversed(self._running[:]):
            with contextlib.suppress(Exception):
                self.stop_node(node)
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None

    def _node(self, name: str) -> Node:
        return Node(name, free_port(), self.root / name, self.root / f"{name}.log", self.dbname)

    def _configure(self, node: Node, options: dict[str, str]) -> None:
        settings = {"port": str(node.port), "listen_addresses": "'127.0.0.1'",
                    "unix_socket_directories": f"'{self.root}'", "fsync": "off", "max_connections": "100",
                    "shared_buffers": "16MB", **options}
        # Later lines win, so appending overrides what initdb or the base backup wrote.
        with open(node.data / "postgresql.conf", "a") as conf:
            conf.writelines(f"{key} = {value}\n" for key, value in settings.items())

    # -- one server --------------------------------------------------------------------

    def start_node(self, node: Node) -> None:
        as_owner(str(BIN / "pg_ctl"), "-D", str(node.data), "-l", str(node.log), "-w", "-t", "60", "start")
        if node not in self._running:
            self._running.append(node)

    def stop_node(self, node: Node, mode: str = "immediate") -> None:
        """Stop *node*: ``immediate`` is a crash (sessions cut, no checkpoint), ``fast`` a clean stop."""
        as_owner(str(BIN / "pg_ctl"), "-D", str(node.data), "-m", mode, "-w", "stop")
        if node in self._running:
            self._running.remove(node)

    def restart_node(self, node: Node, mode: str = "fast") -> None:
        """What ``systemctl restart postgresql`` does to a server: every session ends, it comes back."""
        as_owner(str(BIN / "pg_ctl"), "-D", str(node.data), "-l", str(node.log), "-m", mode, "-w",
                 "-t", "60", "restart")

    # -- replication ---------------------------------------------------------------------

    def position(self) -> str:
        """The primary's current WAL position (where its next record goes: past every commit so far)."""
        return self.primary.sql("SELECT pg_current_wal_insert_lsn()::text")[0][0]

    def replayed(self, node: Node) -> str:
        return node.sql("SELECT pg_last_wal_replay_lsn()::text")[0][0]

    def wait_replayed(self, node: Node | None = None, timeout: float = 30.0) -> None:
        """Wait until *node* (every replica by default) replayed what the primary has written now."""
        target = self.position()
        for replica in [node] if node else self.replicas:
            deadline = time.monotonic() + timeout
            while not replica.sql("SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", target)[0][0]:
                if time.monotonic() > deadline:
                    raise AssertionError(f"{replica.name} did not replay {target} within {timeout} s")
                time.sleep(0.01)

    def pause(self, node: Node) -> None:
        """Stop replaying on *node*: it receives WAL but applies none, so it lags for sure."""
        node.sql("SELECT pg_wal_replay_pause()")
        deadline = time.monotonic() + 10
        while node.sql("SELECT pg_get_wal_replay_pause_state()")[0][0] != "paused":
            if time.monotonic() > deadline:
                raise AssertionError(f"{node.name} did not pause its replay")
            time.sleep(0.01)

    def resume(self, node: Node) -> None:
        node.sql("SELECT pg_wal_replay_resume()")

    def set_apply_delay(self, node: Node, delay: str) -> None:
        """Change *node*'s ``recovery_min_apply_delay`` at once (a reload, no restart)."""
        node.sql(f"ALTER SYSTEM SET recovery_min_apply_delay = '{delay}'")
        node.sql("SELECT pg_reload_conf()")
        # The reload is asynchronous: new sessions show the new value once the
        # server processes (the startup process among them) have read it.
        wanted = node.sql("SELECT %s::interval::text", delay)[0][0]
        deadline = time.monotonic() + 10
        while node.sql("SELECT current_setting('recovery_min_apply_delay')::interval::text")[0][0] != wanted:
            if time.monotonic() > deadline:
                raise AssertionError(f"{node.name} did not take recovery_min_apply_delay = {delay}")
            time.sleep(0.01)
