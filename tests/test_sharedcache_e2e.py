"""The shared cache under mod_wsgi (3 processes x 4 threads): txscope-check finds no stale read.

The cookbook runs with ``TXSCOPE_CACHE=local`` on PostgreSQL (whose READ
COMMITTED default lets every scope cache); the same traffic as
test_e2e_stale.py, writes from every process and crashed writes included,
must find no stale read, no leaked crash write and no lost write, while the
workers' counters show that reads were served from the cache.
"""

import contextlib
import shutil
import tempfile
from pathlib import Path

import pytest

from e2e_support import (CSRF_SECRET, PROCESSES, REPO, THREADS, WSGI_FILE, Cookbook, checker, error_lines,
                         prepare, wait_for)
from modwsgi import serve, www_data_dir
from test_e2e_stale import CHECK, MIN_CHECKS, PROBLEMS

pytestmark = pytest.mark.e2e


@contextlib.contextmanager
def cached_cookbook(database, cache):
    env = {"TXSCOPE_DATABASE_URI": database.uri, "TXSCOPE_CSRF_SECRET": CSRF_SECRET, "TXSCOPE_CACHE": cache}
    with tempfile.TemporaryDirectory(prefix="txscope-cookbook-") as name:
        lib = Path(name) / "cookbook"
        lib.mkdir()
        for module in ("app.py", "models.py"):
            shutil.copy(REPO / module, lib / module)
        with serve(WSGI_FILE, processes=PROCESSES, threads=THREADS, env=env, python_path=[lib]) as server:
            yield Cookbook(server, database)


def hits_after_the_warm_up(app) -> int:
    """Read one row until a read is served from the cache; the workers' hits then.

    A token file that did not exist yet ("local": one per user, in /dev/shm;
    on a fresh machine) stores nothing for a warm-up lease, as any new
    store, and the whole checker run could fall inside it.
    """
    def hits() -> int:
        for _ in range(PROCESSES * THREADS):
            answer = app.call("GET", "/api/users/1")
            assert answer.status == 200, answer
        return sum(w["cache_hits"] for w in app.worker_stats().values())

    return wait_for(hits, 30, "a read served from the cache, after the token file's warm-up lease", 0.2)


def test_with_the_local_cache_no_read_is_stale_and_reads_are_served_from_it():
    with www_data_dir() as data:
        database = prepare("postgres", data)
        with cached_cookbook(database, "local") as app:
            before = hits_after_the_warm_up(app)
            numbers = checker(app.url, *CHECK)
            workers = app.worker_stats()
            log = app.server.log_text()
            errors = error_lines(log)
    hits = sum(w["cache_hits"] for w in workers.values()) - before
    assert numbers["checks"] >= MIN_CHECKS, numbers["report"]
    assert {k: numbers[k] for k in PROBLEMS} == dict.fromkeys(PROBLEMS, 0), numbers["report"]
    assert numbers["http_errors"] == 0, (numbers["report"], errors[-20:])
    assert numbers["workers_seen"] == PROCESSES, (numbers["report"], log[-3000:])
    assert hits > 0, workers
