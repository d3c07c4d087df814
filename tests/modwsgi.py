"""Run a WSGI file under a real mod_wsgi-express server, for end-to-end tests.

The server is the deployment this project exists for: several daemon
processes, each with several threads, so two requests for the same row may
land in different processes with different SQLObject caches.

    with www_data_dir() as data, serve(
        wsgi_file,
        python_path=[cookbook_dir],
        env={"TXSCOPE_DATABASE_URI": f"sqlite://{data}/app.db"},
    ) as server:
        urllib.request.urlopen(server.url + "/api/stats")

What the daemons run, and why it is set up this way:

- The daemons run as ``www-data`` (Apache refuses root) from the venv that
  ``.ci/install-modwsgi.sh`` builds from Debian's Python under /opt; www-data
  cannot read the pyenv interpreter under /root.
- The WSGI file, each ``python_path`` folder and this work tree's
  ``webpy_txscope`` package are copied into the server's own temporary folder
  on every start. The copies are readable by www-data wherever the work tree
  lives, and the fresh package copy comes before the venv's site-packages, so
  the daemons never run a stale installed copy of the code under test. The WSGI
  file is copied alone: whatever it imports must come from ``python_path``.
- ``env`` reaches the daemons' ``os.environ`` through the server root's
  ``envvars`` file, which ``apachectl`` sources before starting Apache and
  which the daemons inherit. (``--setenv`` only fills the per-request WSGI
  environ.) ``apachectl`` itself runs with a minimal environment, so nothing
  from the test process leaks into the app by accident.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Mapping

REPO = Path(__file__).resolve().parents[1]
VENV = Path(os.environ.get("TXSCOPE_MODWSGI_VENV", "/opt/txscope-modwsgi-venv"))
INSTALL_HINT = "run `bash .ci/install-modwsgi.sh` (as root) first"
RUN_AS = "www-data"

# Junk that must not be copied into the server's folder.
_IGNORE = shutil.ignore_patterns(
    ".git", "__pycache__", "*.pyc", "*.db", "*.db-journal", ".pytest_cache", ".venv*"
)


class ModWsgiError(RuntimeError):
    """The mod_wsgi server could not be set up, started or stopped."""


@dataclass(frozen=True)
class ModWsgiServer:
    """A running server: where to send requests and where it logs."""

    url: str
    server_root: Path
    error_log: Path

    def log_text(self) -> str:
        """The error log so far ('' when Apache has not written one)."""
        try:
            return self.error_log.read_text(errors="replace")
        except FileNotFoundError:
            return ""


@contextlib.contextmanager
def www_data_dir() -> Iterator[Path]:
    """Yield a temporary folder that www-data can write, e.g. for SQLite.

    SQLite writes its ``-journal`` file beside the database, so the folder
    itself, not only the database file, must belong to www-data. A database
    file the test creates (as root) in it must be handed over too: see
    `give_to_www_data`.
    """
    with tempfile.TemporaryDirectory(prefix="txscope-data-") as name:
        path = Path(name)
        give_to_www_data(path)
        yield path


def give_to_www_data(*paths: os.PathLike | str) -> None:
    """Make files or folders the test created belong to www-data."""
    for path in paths:
        shutil.chown(path, RUN_AS, RUN_AS)


@contextlib.contextmanager
def serve(
    wsgi_file: os.PathLike | str,
    *,
    processes: int = 3,
    threads: int = 4,
    env: Mapping[str, str] | None = None,
    python_path: Iterable[os.PathLike | str] = (),
    start_timeout: float = 30.0,
    stop_timeout: float = 15.0,
) -> Iterator[ModWsgiServer]:
    """Serve `wsgi_file` with mod_wsgi-express on a free 127.0.0.1 port.

    Yields once the server answers HTTP; stops it on exit and fails unless
    every Apache and daemon process of this server is gone. When the block
    raises, the error log is written to stderr so the test report shows it.
    """
    express = _mod_wsgi_express()
    with tempfile.TemporaryDirectory(prefix="txscope-modwsgi-") as name:
        base = Path(name)
        base.chmod(0o755)
        code_dir, python_dirs, script = _copy_code(base, Path(wsgi_file), python_path)
        server = _start(
            express, base, script, code_dir, python_dirs,
            processes, threads, env or {}, start_timeout,
        )
        try:
            yield server
        except BaseException:
            sys.stderr.write(f"--- mod_wsgi error log {server.error_log} ---\n")
            sys.stderr.write(server.log_text())
            raise
        finally:
            _stop(server, stop_timeout)


def _mod_wsgi_express() -> Path:
    """The venv's mod_wsgi-express, or a clear error saying how to get it."""
    express = VENV / "bin" / "mod_wsgi-express"
    if not express.is_file():
        raise ModWsgiError(f"{express} not found: {INSTALL_HINT}")
    check = subprocess.run(
        [str(VENV / "bin" / "python"), "-c", "import mod_wsgi.server, web, sqlobject"],
        capture_output=True, text=True,
    )
    if check.returncode:
        raise ModWsgiError(f"the venv {VENV} is incomplete ({check.stderr.strip()}): {INSTALL_HINT}")
    return express


def _copy_code(
    base: Path, wsgi_file: Path, python_path: Iterable[os.PathLike | str]
) -> tuple[Path, list[Path], Path]:
    """Copy the app's code where www-data can read it.

    Returns the folder holding the WSGI file (also the working directory),
    the python-path folders (the package copy first) and the WSGI file copy.
    """
    if not wsgi_file.is_file():
        raise ModWsgiError(f"WSGI file {wsgi_file} not found")
    code_dir = base / "code"
    package_dir = code_dir / "site"
    shutil.copytree(REPO / "webpy_txscope", package_dir / "webpy_txscope", ignore=_IGNORE)
    python_dirs = [package_dir]
    for index, folder in enumerate(map(Path, python_path)):
        if not folder.is_dir():
            raise ModWsgiError(f"python_path entry {folder} is not a folder")
        target = code_dir / f"path{index}-{folder.name}"
        shutil.copytree(folder, target, ignore=_IGNORE)
        python_dirs.append(target)
    script = code_dir / wsgi_file.name
    shutil.copyfile(wsgi_file, script)
    _open_to_all(code_dir)
    return code_dir, python_dirs, script


def _open_to_all(folder: Path) -> None:
    """chmod a+rX, recursively: copies keep the source's restrictive modes."""
    for path in [folder, *folder.rglob("*")]:
        extra = 0o555 if path.is_dir() else 0o444
        path.chmod(path.stat().st_mode | extra)


def _start(
    express: Path,
    base: Path,
    script: Path,
    code_dir: Path,
    python_dirs: list[Path],
    processes: int,
    threads: int,
    env: Mapping[str, str],
    timeout: float,
) -> ModWsgiServer:
    """Set up a server root, start Apache and wait until it answers.

    A free port found by binding port 0 can be taken by someone else before
    Apache binds it, so a start that fails is retried on a new port.
    """
    attempts = 3
    for attempt in range(1, attempts + 1):
        port = _free_port()
        server_root = base / f"server-{port}"
        _setup_server(express, server_root, script, code_dir, python_dirs, port, processes, threads)
        _write_envvars(server_root / "envvars", env)
        server = ModWsgiServer(
            url=f"http://127.0.0.1:{port}",
            server_root=server_root,
            error_log=server_root / "error_log",
        )
        started = _apachectl(server_root, "start")
        if started.returncode == 0:
            break
        _stop(server, timeout=5.0)
        if attempt == attempts or "Address already in use" not in started.stdout:
            raise ModWsgiError(
                f"apachectl start failed ({started.returncode}):\n{started.stdout}\n"
                f"{server.log_text()}"
            )
    try:
        _wait_until_answering(server, timeout)
    except BaseException:
        _stop(server, timeout=5.0)
        raise
    return server


def _setup_server(
    express: Path,
    server_root: Path,
    script: Path,
    code_dir: Path,
    python_dirs: list[Path],
    port: int,
    processes: int,
    threads: int,
) -> None:
    """Write the server root: httpd.conf, apachectl, envvars, handler files."""
    command = [
        str(express), "setup-server", str(script),
        "--user", RUN_AS, "--group", RUN_AS,
        "--locale", "C.UTF-8",
        "--host", "127.0.0.1", "--port", str(port),
        "--processes", str(processes), "--threads", str(threads),
        "--server-root", str(server_root),
        "--working-directory", str(code_dir),
        # A changed file must not restart daemons in the middle of a test.
        "--disable-reloading",
    ]
    for folder in python_dirs:
        command += ["--python-path", str(folder)]
    done = subprocess.run(command, capture_output=True, text=True, env=_minimal_env())
    if done.returncode:
        raise ModWsgiError(f"mod_wsgi-express setup-server failed:\n{done.stdout}{done.stderr}")


def _write_envvars(path: Path, env: Mapping[str, str]) -> None:
    """Export `env` from the file apachectl sources before starting Apache."""
    lines = [f"export {name}={shlex.quote(str(value))}\n" for name, value in env.items()]
    path.write_text("".join(lines))


def _minimal_env() -> dict[str, str]:
    """The environment apachectl runs with: nothing of the test process's own."""
    return {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), "LANG": "C.UTF-8"}


def _apachectl(server_root: Path, action: str) -> subprocess.CompletedProcess[str]:
    """Run the server root's apachectl; stdout and stderr together."""
    return subprocess.run(
        [str(server_root / "apachectl"), action],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env=_minimal_env(), timeout=60,
    )


def _free_port() -> int:
    """A port on 127.0.0.1 that nobody listened on a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_until_answering(server: ModWsgiServer, timeout: float) -> None:
    """Poll until the server gives any HTTP answer, or fail with its log."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(server.url + "/", timeout=5):
                return
        except urllib.error.HTTPError:
            return
        except OSError as error:
            last_error = error
            time.sleep(0.1)
    raise ModWsgiError(
        f"{server.url} did not answer within {timeout} s (last error: {last_error})\n"
        f"--- {server.error_log} ---\n{server.log_text()}"
    )


def _stop(server: ModWsgiServer, timeout: float) -> None:
    """Stop Apache and fail unless all of its processes are gone in time."""
    _apachectl(server.server_root, "stop")
    deadline = time.monotonic() + timeout
    while True:
        left = server_processes(server.server_root)
        if not left:
            return
        if time.monotonic() > deadline:
            break
        time.sleep(0.1)
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, 9)
    raise ModWsgiError(
        f"processes of {server.server_root} still running {timeout} s after "
        f"apachectl stop (killed): {left}"
    )


def server_processes(server_root: Path) -> list[int]:
    """Pids of live Apache and mod_wsgi daemon processes of this server root.

    Each of them carries ``-f SERVER_ROOT/httpd.conf`` in its command line;
    zombies (already dead, waiting to be reaped) do not count.
    """
    marker = str(server_root / "httpd.conf").encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        if marker in cmdline and state != "Z":
            pids.append(int(entry.name))
    return pids
