"""The Redis shared cache across two app servers: no stale read, with Redis restarted mid-run.

Two mod_wsgi-express servers on different ports (3 processes x 4 threads
each, as the other end-to-end tests) serve the cookbook with
``TXSCOPE_CACHE=redis://...``, sharing one Redis of the test's own and one
PostgreSQL database.  txscope-check is given both URLs: each client sends its
requests to the two servers in turn, so about half of the reads after a write
land on the other server, and every client's writes go to both over the run.
It runs here, in the test's process, so that the test knows when each check
and each HTTP error happened.

Once a tenth of the checks are made, Redis is killed (SIGKILL) and started
again on the same port, empty (it keeps nothing on disk): the "flushed or
restarted" fault of README.org.  While it is down the package's rules say
(webpy_txscope/sharedcache.py):

- reads go to the database: 200 with the current value;
- a write is rolled back and answered 503 (``CacheUnavailable``); a write
  whose COMMIT went through before the second token replacement failed is
  answered 500 (``InvalidationFailed``).  The checker takes neither as
  acknowledged: the row's value is unknown until its next write;
- the crash writes answer 500 as always, and roll back.

The outage is kept short: a client whose write failed goes on to its next
row at once, without reads (the row's value is unknown), so a long outage
would use up its rounds in failed writes.  Redis is started again once the
checker has seen a dozen failed writes (or after DOWN_S at most), and
meanwhile the test itself reads and writes a sample row on both servers:
the reads must answer 200 with the database's value, the writes 503 and
leave the database's value as it was.

After the restart nothing is stored in the cache for one lease (10 s): a
writer whose pending marker was lost with the old Redis may still be
committing.  Once that lease is over (the run usually lasts longer; else the
test waits), a few reads of a sample row on each server must be served from
the cache again.

The control is the same run on servers whose writes replace no token
(tests/sharedcache_no_invalidation.wsgi): it must report stale reads, which
proves that this traffic shows them when the invalidation is missing.
"""

from __future__ import annotations

import contextlib
import io
import re
import shutil
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from e2e_support import (CSRF_SECRET, PROCESSES, REPO, THREADS, WSGI_FILE, Cookbook, PrivateRedis, prepare, record,
                         wait_for)
from modwsgi import serve
from test_e2e_stale import MIN_CHECKS, PROBLEMS
from webpy_txscope import check

pytestmark = pytest.mark.e2e

NO_INVALIDATION_WSGI = REPO / "tests" / "sharedcache_no_invalidation.wsgi"
# test_e2e_stale.py's traffic with 30 rounds instead of 24: 12 clients x 3 rows x
# (30 x (1 write answer + 5 reads) + 6 crashes x 5 reads) = 7,560 checks planned,
# of which a failed write during the outage skips its reads.
CHECK = ["--clients", "12", "--rows-per-client", "3", "--rounds", "30", "--reads", "5", "--crash-every", "5"]
# Checks made before Redis is killed: early enough that the run goes on for
# well over the 10 s warm-up lease after the restart.
RESTART_AFTER = 750
LEASE_S = 10.0  # the cache's default lease, which app.py keeps
DOWN_S = 2.0  # how long Redis stays down at most
FAILED_WRITES = 12  # the failed writes of the checker that end the outage sooner
PROBES = 6  # reads, and writes, of a sample row per server while Redis is down
# After Redis is back, a write may still meet a pooled connection to the old
# server once; nothing may fail later than this.
GRACE_S = 1.5
# "txscope:epoch" is the key RedisStore makes when it first finds the store
# new, starting the warm-up lease.  Set beforehand, the store looks like one
# that has served for longer than a lease: the cache works from the first
# request, and the warm-up is seen after the restart only.
EPOCH_KEY = "txscope:epoch"
# An HTTP error as txscope-check words it: "update_user(17) on http://... answered 500, expected 200".
ERROR = re.compile(r"(?P<call>\w+)\((?P<row>\d*)\) on (?P<url>\S+) answered (?P<status>\d+)")


@dataclass
class TimedTally(check.Tally):
    """txscope-check's tally, noting when each check and each HTTP error happened (time.monotonic)."""

    check_times: list[float] = field(default_factory=list)
    error_times: list[tuple[float, str]] = field(default_factory=list)

    def check(self, problem: str | None, detail: str, cross_server: bool = False) -> None:
        super().check(problem, detail, cross_server)
        self.check_times.append(time.monotonic())

    def http_error(self, detail: str) -> None:
        super().http_error(detail)
        self.error_times.append((time.monotonic(), detail))


@contextlib.contextmanager
def two_servers(database, cache: str, wsgi_file: Path):
    """The cookbook served twice (two mod_wsgi-express servers), both on `database` and `cache`."""
    env = {"TXSCOPE_DATABASE_URI": database.uri, "TXSCOPE_CSRF_SECRET": CSRF_SECRET, "TXSCOPE_CACHE": cache}
    with tempfile.TemporaryDirectory(prefix="txscope-cookbook-") as name:
        lib = Path(name) / "cookbook"
        lib.mkdir()
        for module in ("app.py", "models.py"):
            shutil.copy(REPO / module, lib / module)
        with contextlib.ExitStack() as stack:
            servers = [stack.enter_context(serve(wsgi_file, processes=PROCESSES, threads=THREADS, env=env,
                                                 python_path=[lib])) for _ in range(2)]
            yield [Cookbook(server, database) for server in servers]


def run_with_a_redis_restart(wsgi_file: Path) -> dict:
    """txscope-check across two servers, Redis killed and started again mid-run; the figures."""
    database = prepare("postgres")
    with PrivateRedis() as redis_server:
        with redis_server.client() as client:
            client.set(EPOCH_KEY, "older than one lease")
        with two_servers(database, redis_server.url, wsgi_file) as apps:
            tally = TimedTally()
            options = check.parse_args([app.url for app in apps] + [*CHECK, "--quiet"])
            with ThreadPoolExecutor(1) as pool:
                running = pool.submit(check.run, options, io.StringIO(), tally)
                wait_for(lambda: tally.checks >= RESTART_AFTER or running.done(), 120,
                         f"{RESTART_AFTER} checks before the restart")
                before = [app.worker_stats() for app in apps]
                down_at = time.monotonic()
                redis_server.kill()
                probes = probe_while_down(apps, database)
                failed_before = len(tally.error_times)
                while len(tally.error_times) < failed_before + FAILED_WRITES and time.monotonic() < down_at + DOWN_S:
                    time.sleep(0.01)
                redis_server.start()
                up_at = time.monotonic()
                tally, seconds = running.result(timeout=300)
                ended_at = time.monotonic()
            after = [app.worker_stats() for app in apps]
            time.sleep(max(0.0, up_at + LEASE_S + 0.5 - time.monotonic()))
            recovered = probe_the_cache(apps, database)
            logs = [app.server.log_text() for app in apps]
    numbers = check.summary(tally, seconds)
    window = (down_at, up_at + GRACE_S)
    errors = [(at, detail, ERROR.match(detail)) for at, detail in tally.error_times]
    kinds = Counter(f"{m['call']} {m['status']}" if m else detail for _, detail, m in errors)

    def total(stats: dict, name: str) -> int:
        return sum(worker[name] for worker in stats.values())

    def since(name: str) -> list[int]:
        """Per server: the count `name` grew by after the restart (processes that answered both times)."""
        return [sum(w[name] - b[name] for pid, w in a.items() if (b := before_one.get(pid)))
                for a, before_one in zip(after, before)]

    return dict(
        numbers,
        **probes,
        report=str(numbers),
        cross_server_share=round(numbers["cross_server_checks"] / max(numbers["checks"], 1), 3),
        redis_down_s=round(up_at - down_at, 2),
        checks_while_redis_down=sum(down_at <= at <= up_at for at in tally.check_times),
        errors_while_redis_down=sum(window[0] <= at <= window[1] for at, _, _ in errors),
        errors_outside_the_outage=[detail for at, detail, _ in errors if not window[0] <= at <= window[1]],
        error_kinds=dict(kinds),
        cache_hits=[total(stats, "cache_hits") for stats in after],
        cache_misses=[total(stats, "cache_misses") for stats in after],
        cache_hits_before_the_restart=[total(stats, "cache_hits") for stats in before],
        cache_hits_after_the_restart=since("cache_hits"),
        run_after_the_warm_up_s=round(ended_at - up_at - LEASE_S, 1),
        cache_hits_of_reads_after_the_warm_up=recovered,
        cache_invalidations=[total(stats, "cache_invalidations") for stats in after],
        workers_per_server=[len(stats) for stats in after],
        store_unreachable_logged=sum(log.count("is unreachable (") for log in logs),
        store_back_logged=sum(log.count("is reachable again") for log in logs),
    )


def probe_while_down(apps: list[Cookbook], database) -> dict:
    """Read and write a sample row (one the checker never touches) on every server; what they answered."""
    user_id, (_, fullname, _) = min(database.users().items())

    def read(app: Cookbook) -> str:
        answer = app.call("GET", f"/api/users/{user_id}")
        if answer.status != 200:
            return str(answer.status)
        return "200, the database's value" if answer.json()["fullname"] == fullname else "200, another value"

    def write(app: Cookbook) -> str:
        return str(app.call("POST", f"/api/users/{user_id}", {"fullname": "written while Redis was down"}).status)

    # At once, so that the outage stays short.
    with ThreadPoolExecutor(2 * PROBES) as pool:
        reads = pool.map(read, apps * PROBES)
        writes = pool.map(write, apps * PROBES)
        reads, writes = Counter(reads), Counter(writes)
    return {"probe_reads": dict(reads), "probe_writes": dict(writes),
            "probe_row_unchanged": database.users()[user_id][1] == fullname}


def probe_the_cache(apps: list[Cookbook], database) -> list[int]:
    """Per server: the cache hits of 4 reads of a sample row per process (some process gets two at least)."""
    user_id = min(database.users())
    hits = []
    for app in apps:
        before = app.worker_stats()
        for _ in range(4 * PROCESSES):
            assert app.call("GET", f"/api/users/{user_id}").status == 200
        hits.append(sum(w["cache_hits"] - before[pid]["cache_hits"] for pid, w in app.worker_stats().items()))
    return hits


FIGURES = ("checks", "cross_server_checks", "cross_server_share", *PROBLEMS, "crash_writes", "http_errors",
           "errors_while_redis_down", "error_kinds", "checks_while_redis_down", "redis_down_s", "probe_reads",
           "probe_writes", "cache_hits", "cache_misses", "cache_hits_before_the_restart",
           "cache_hits_after_the_restart", "run_after_the_warm_up_s", "cache_hits_of_reads_after_the_warm_up",
           "cache_invalidations", "workers_seen", "duration_s")


def test_two_servers_on_one_redis_serve_no_stale_read_through_a_redis_restart():
    f = run_with_a_redis_restart(WSGI_FILE)
    record("shared_cache_redis", "two servers, invalidation on", {k: f[k] for k in FIGURES})
    report = f["report"]
    assert f["checks"] >= MIN_CHECKS, report
    assert {k: f[k] for k in PROBLEMS} == dict.fromkeys(PROBLEMS, 0), report
    assert f["rows_not_deleted"] == 0, report
    # Both servers, every process of each, and reads back on the other server.
    assert f["workers_seen"] == 2 * PROCESSES, report
    assert f["cross_server_share"] >= 0.4, f
    # Both servers wrote (each write replaces tokens) and served reads from the cache.
    assert all(n > 0 for n in f["cache_invalidations"]), f
    assert all(n > 0 for n in f["cache_hits"]), f
    # While Redis was down: reads were answered (from the database), writes
    # failed with 503 (500 if Redis went between COMMIT and the second
    # replacement) and were not taken as acknowledged; nothing failed
    # before the kill or after Redis was back.
    assert f["checks_while_redis_down"] > 0, f
    assert f["errors_outside_the_outage"] == [], f
    assert "update_user 503" in f["error_kinds"], f
    assert set(f["error_kinds"]) <= {"update_user 503", "update_user 500"}, f
    assert f["errors_while_redis_down"] > 0, f
    assert f["store_unreachable_logged"] > 0 and f["store_back_logged"] > 0, f
    assert f["probe_reads"] == {"200, the database's value": 2 * PROBES}, f
    assert f["probe_writes"] == {"503": 2 * PROBES} and f["probe_row_unchanged"], f
    # The cache works again once the restart's warm-up lease is over, on both servers.
    assert all(n > 0 for n in f["cache_hits_of_reads_after_the_warm_up"]), f


def test_without_the_invalidation_the_same_run_reports_stale_reads():
    f = run_with_a_redis_restart(NO_INVALIDATION_WSGI)
    record("shared_cache_redis", "two servers, invalidation off", {k: f[k] for k in FIGURES})
    assert f["workers_seen"] == 2 * PROCESSES, f["report"]
    assert f["cross_server_share"] >= 0.4, f
    assert f["stale_reads"] > 0, f["report"]
