"""Read replicas under load: mod_wsgi (3 processes x 4 threads), a primary, two delayed replicas, PgBouncer.

Everything runs on a private cluster (tests/pg_cluster.py): a primary and two
streaming replicas that apply each commit ``APPLY_DELAY`` late, each behind
its own PgBouncer in transaction mode (tests/pgbouncer.py).  The app
(tests/replicas_app.wsgi) reads and writes rows of numbers; every client has
its own cookie jar and its own row, and writes ever larger numbers into it.

- Session consistency: a client always reads back its own last write (0
  stale over at least 5,000 checks), while most reads are served by the
  replicas.  Reads of rows other clients just wrote may be older: counted.
- The same clients ignoring the cookie read their own writes stale: the proof
  that the test sees stale reads when the rule is not kept.
- Strong consistency: a read that starts after a write was acknowledged, to
  any client, sees it (0 stale).
- A replica stopped mid-run: no request fails.
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from e2e_support import PROCESSES, THREADS, call, record, worker_stats
from modwsgi import serve
from pg_cluster import PgCluster
from pgbouncer import PgBouncer

pytestmark = pytest.mark.e2e

APP = Path(__file__).resolve().parent / "replicas_app.wsgi"
APPLY_DELAY = "50ms"
CLIENTS = 2 * PROCESSES * THREADS
MIN_CHECKS = 5000
ROUNDS = -(-MIN_CHECKS // CLIENTS)  # one check of its own row per client and round
REPLICA_WAIT = "1.0"


@pytest.fixture(scope="module")
def cluster():
    with PgCluster(replicas=2, apply_delay=APPLY_DELAY) as running:
        running.primary.sql("CREATE TABLE rows (id integer PRIMARY KEY, value bigint NOT NULL)")
        running.primary.sql(f"INSERT INTO rows SELECT g, 0 FROM generate_series(0, {CLIENTS - 1}) g")
        running.wait_replayed()
        with PgBouncer(running.primary.port, "test", pool_size=8) as primary, \
                PgBouncer(running.replicas[0].port, "test", pool_size=8) as first, \
                PgBouncer(running.replicas[1].port, "test", pool_size=8) as second:
            running.bouncers = (primary, first, second)
            yield running


def served(cluster, consistency):
    primary, *replicas = cluster.bouncers
    env = {"TXSCOPE_DATABASE_URI": primary.uri(), "TXSCOPE_REPLICAS": ",".join(r.uri() for r in replicas),
           "TXSCOPE_CONSISTENCY": consistency, "TXSCOPE_REPLICA_WAIT": REPLICA_WAIT}
    return serve(APP, processes=PROCESSES, threads=THREADS, env=env)


@dataclass
class Run:
    """What the clients saw: checks of their own row, of other rows, and every failed request."""

    own_checks: int = 0
    own_stale: int = 0
    other_checks: int = 0
    other_older: int = 0
    failed: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def load(url: str, rounds: int, *, cookies: bool = True, during=None) -> Run:
    """CLIENTS clients: write the next number into their own row, read it back, read another client's row.

    A read of another row is older when it shows less than what that client
    had been told was written before the read was sent.  *during* runs once,
    in its own thread, when a third of the rounds are done.
    """
    run = Run()
    acknowledged = [0] * CLIENTS  # per row: the last value whose POST answered 200
    done = [0]
    third = threading.Event()

    def client(me: int) -> None:
        jar: dict[str, str] = {}
        rng = random.Random(me)

        def send(method: str, path: str, body: bytes | None = None):
            headers = {"Cookie": "; ".join(f"{k}={v}" for k, v in jar.items())} if cookies and jar else {}
            answer = call(url, method, path, body=body, headers=headers, content_type="text/plain")
            cookie = answer.headers.get("set-cookie")
            if cookie:
                name, _, value = cookie.split(";")[0].partition("=")
                jar[name] = value
            if answer.status != 200:
                with run.lock:
                    run.failed.append(f"{method} {path}: {answer}")
                return None
            return int(answer.body) if method == "GET" else answer.body

        for value in range(1, rounds + 1):
            if send("POST", f"/rows/{me}", str(value).encode()) is None:
                continue
            acknowledged[me] = value
            got = send("GET", f"/rows/{me}")
            other = rng.randrange(CLIENTS)
            expected = acknowledged[other]
            seen = send("GET", f"/rows/{other}")
            with run.lock:
                if got is not None:
                    run.own_checks += 1
                    run.own_stale += got < value
                if seen is not None:
                    run.other_checks += 1
                    run.other_older += seen < expected
                done[0] += 1
                if done[0] == CLIENTS * rounds // 3:
                    third.set()

    threads = [threading.Thread(target=client, args=(n,)) for n in range(CLIENTS)]
    helper = None
    if during is not None:
        helper = threading.Thread(target=lambda: third.wait(300) and during())
        helper.start()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(600)
    if helper is not None:
        helper.join(60)
    return run


def totals(url: str) -> dict[str, int]:
    names = ("replica_reads", "primary_reads", "replica_fallbacks", "replica_waits", "replica_reruns")
    per_worker = worker_stats(url, "/stats").values()
    return {name: sum(w[name] for w in per_worker) for name in names}


@pytest.fixture(scope="module")
def session_mode(cluster):
    """Session consistency: a full run with a replica stopped after a third, then a run without cookies."""
    stopped = cluster.replicas[1]
    stops: list[float] = []
    with served(cluster, "session") as server:
        started = time.monotonic()
        with_cookies = load(server.url, ROUNDS, during=lambda: (cluster.stop_node(stopped),
                                                                stops.append(time.monotonic())))
        assert len(stops) == 1 and not stopped.is_up(), "the replica was not stopped mid-run"
        duration = time.monotonic() - started
        counts = totals(server.url)
        cluster.start_node(stopped)
        without_cookies = load(server.url, 10, cookies=False)
    record("replicas", "session", {
        "own_row_checks": with_cookies.own_checks, "own_row_stale": with_cookies.own_stale,
        "other_row_checks": with_cookies.other_checks, "other_row_older": with_cookies.other_older,
        "failed_requests": len(with_cookies.failed), "replica_stopped_mid_run": 1, **counts,
        "duration_s": round(duration, 1),
        "without_cookie_own_row_checks": without_cookies.own_checks,
        "without_cookie_own_row_stale": without_cookies.own_stale,
    })
    return with_cookies, without_cookies, counts


def test_session_mode_a_client_never_reads_its_own_write_stale(session_mode):
    run, _, _ = session_mode
    assert run.own_checks >= MIN_CHECKS
    assert run.own_stale == 0


def test_session_mode_most_reads_are_served_by_the_replicas(session_mode):
    _, _, counts = session_mode
    assert counts["replica_reads"] >= counts["primary_reads"], counts


def test_a_replica_stopped_mid_run_fails_no_request(session_mode):
    run, _, _ = session_mode
    assert run.failed == []


def test_without_the_cookie_clients_read_their_own_writes_stale(session_mode):
    _, without_cookies, _ = session_mode
    assert without_cookies.own_stale > 0


def test_strong_mode_no_read_is_older_than_an_acknowledged_write(cluster):
    with served(cluster, "strong") as server:
        run = load(server.url, ROUNDS // 4)
        counts = totals(server.url)
    record("replicas", "strong", {
        "own_row_checks": run.own_checks, "own_row_stale": run.own_stale,
        "other_row_checks": run.other_checks, "other_row_older": run.other_older,
        "failed_requests": len(run.failed), **counts,
    })
    assert run.failed == []
    assert (run.own_stale, run.other_older) == (0, 0)
    assert counts["replica_reads"] > 0
