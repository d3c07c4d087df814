"""A private PgBouncer for the tests, in transaction pooling mode on a free port.

>>> with PgBouncer(5432, "txscope_test_1", pool_size=2) as bouncer:   # doctest: +SKIP
...     uri = bouncer.uri(driver="psycopg")

Debian's ``pgbouncer`` package (1.18) refuses to run as root, so it runs as
``postgres`` from a temporary folder that holds its ini file, its auth file,
log and pid file.  It is stopped (SIGTERM to the pid in its pid file) and the
folder removed on every path out, failures included.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import time
from pathlib import Path

from pg_cluster import as_owner, free_port, private_dir

PGBOUNCER = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
INSTALL_HINT = "apt-get install -y pgbouncer"


class PgBouncer:
    """PgBouncer in front of the PostgreSQL server on 127.0.0.1:*server_port*, for database *dbname*.

    *pool_size* server connections at most per database (``default_pool_size``):
    small, so that clients share server connections the way a busy site's do.
    """

    def __init__(self, server_port: int, dbname: str, *, pool_size: int = 2, pool_mode: str = "transaction"):
        self.server_port = server_port
        self.dbname = dbname
        self.pool_size = pool_size
        self.pool_mode = pool_mode
        self.port = 0
        self.root: Path | None = None

    def uri(self, driver: str | None = None) -> str:
        uri = f"postgres://postgres@127.0.0.1:{self.port}/{self.dbname}"
        return f"{uri}?driver={driver}" if driver else uri

    def __enter__(self) -> "PgBouncer":
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        if not os.path.exists(PGBOUNCER):
            raise RuntimeError(f"pgbouncer is not installed: {INSTALL_HINT}")
        self.root = private_dir("txscope-pgb-")
        self.port = free_port()
        (self.root / "users.txt").write_text('"postgres" ""\n')
        ini = self.root / "pgbouncer.ini"
        ini.write_text(
            "[databases]\n"
            f"{self.dbname} = host=127.0.0.1 port={self.server_port} dbname={self.dbname} user=postgres\n"
            "[pgbouncer]\n"
            "listen_addr = 127.0.0.1\n"
            f"listen_port = {self.port}\n"
            "unix_socket_dir =\n"
            "auth_type = trust\n"
            "admin_users = postgres\n"
            f"auth_file = {self.root / 'users.txt'}\n"
            f"pool_mode = {self.pool_mode}\n"
            f"default_pool_size = {self.pool_size}\n"
            "max_client_conn = 500\n"
            # A server that is down fails its clients within seconds, not the
            # default two minutes, and is tried again a second later.
            "query_wait_timeout = 5\n"
            "server_login_retry = 1\n"
            # A pooled server connection is reset before another client gets
            # it only in session mode; in transaction mode that is the point.
            "server_reset_query =\n"
            f"logfile = {self.root / 'pgbouncer.log'}\n"
            f"pidfile = {self.root / 'pgbouncer.pid'}\n"
        )
        as_owner(PGBOUNCER, "-d", str(ini))
        deadline = time.monotonic() + 10
        while not self._listening():
            if time.monotonic() > deadline:
                raise RuntimeError(f"pgbouncer did not listen on {self.port} within 10 s:\n{self.log()}")
            time.sleep(0.02)

    def _listening(self) -> bool:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=1):
            return True
        return False

    def pid(self) -> int | None:
        with contextlib.suppress(OSError, ValueError):
            return int((self.root / "pgbouncer.pid").read_text())
        return None

    def log(self) -> str:
        with contextlib.suppress(OSError):
            return (self.root / "pgbouncer.log").read_text()
        return ""

    def stop(self) -> None:
        if self.root is None:
            return
        pid = self.pid()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline:
                    os.kill(pid, 0)  # raises ProcessLookupError once it is gone
                    time.sleep(0.02)
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(self.root, ignore_errors=True)
        self.root = None

    def server_connections(self) -> int:
        """How many server connections PgBouncer holds now (SHOW SERVERS on its admin console)."""
        import psycopg2

        conn = psycopg2.connect(host="127.0.0.1", port=self.port, user="postgres", dbname="pgbouncer")
        conn.autocommit = True
        try:
            cur = conn.cursor()
            cur.execute("SHOW SERVERS")
            return len(cur.fetchall())
        finally:
            conn.close()
