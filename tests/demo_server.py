"""The cookbook demo as a real server: `python app.py ...` on a fresh SQLite database, for tests."""

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port(count=1):
    """A port such that it and the *count* - 1 after it are free."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        try:
            for extra in range(1, count):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port + extra))
            return port
        except OSError:
            continue


def wait_for(url, deadline=30):
    """The page at *url*, once the server answers."""
    stop = time.monotonic() + deadline
    while True:
        try:
            return urllib.request.urlopen(url, timeout=5).read().decode()
        except OSError:
            assert time.monotonic() < stop, f"nothing answered at {url}"
            time.sleep(0.1)


@contextlib.contextmanager
def serving(cwd, *args, python=sys.executable, root=ROOT, **env):
    """`python models.py` then `python app.py ARGS` in *cwd* (server log: cwd/server.log), until the block ends."""
    env = dict(os.environ, TXSCOPE_DATABASE_URI="", PYTHONPATH=str(root), **env)
    for name in ("TXSCOPE_CSRF_SECRET", "TXSCOPE_DEMO_PEERS", "TXSCOPE_ENABLED"):
        env.pop(name, None)
    out = subprocess.run([python, os.path.join(root, "models.py")], cwd=cwd, env=env,
                         capture_output=True, text=True, timeout=120)
    assert "10 users in sqlite:" in out.stdout, out.stderr
    with open(os.path.join(cwd, "server.log"), "wb") as log:
        server = subprocess.Popen([python, os.path.join(root, "app.py"), *args], cwd=cwd, env=env,
                                  stdout=log, stderr=subprocess.STDOUT)
    try:
        yield
    finally:
        server.terminate()
        server.wait(10)
