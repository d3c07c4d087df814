"""Database faults under load, with nothing lost: the cookbook under mod_wsgi, 3 processes x 4 threads.

PostgreSQL: every application backend is terminated (``pg_terminate_backend``)
again and again while checker-like clients write, read and crash writes, then
the server is restarted once.  That server is the test's own
(`e2e_support.private_postgres`), never the machine's shared one.  MariaDB (mysqlclient, then PyMySQL): application
connections are ``KILL``-ed while they are inside a transaction, between
statements or during one.  Then, with no more faults, every request must
succeed again, without restarting the app.

What may be in each row follows from the answers (see `e2e_support.Load`): an
acknowledged write must stay, and neither a crashed write nor a write answered
503 may ever appear (a 500 may mean that COMMIT was sent and its reply lost, so
that write may or may not be there).  A killed MariaDB transaction that
SQLObject's auto-reconnect finished in autocommit would leak the write of a
crash request (the crash endpoint writes, then fails): without the scope's
reconnect guard these tests see such leaks.

Also: a pooled connection that died while idle does not fail the next request,
and a database that cannot be reached at all gets 503 with Retry-After, one
log line per process with the password masked, and service again as soon as
it is back.
"""

import secrets
import time
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import pytest

from e2e_support import (
    E2E_DB, LEAKED, LOST, PROCESSES, SERVER_KINDS, THREADS, WRONG_ANSWER, Load, SessionKiller, TcpProxy,
    admin_connection, call, cookbook, prepare, private_postgres, record,
)

pytestmark = pytest.mark.e2e

CLIENTS = PROCESSES * THREADS
PATTERN = ("write", "read", "crash", "read")  # a crashed write in every fourth request
TERMINATE_ROUNDS = 40  # PostgreSQL: rounds of ending every backend
MIN_KILLS_IN_TRANSACTION = 100  # MariaDB: KILLs of a connection inside a transaction
QUIET_REQUESTS = 600  # requests after the faults, all of which must succeed
PASSWORD = "s3cret"


# -- faults under load ------------------------------------------------------------------


@pytest.fixture(scope="module")
def postgres_server():
    """The PostgreSQL server these tests end sessions of and restart: their own, never the machine's."""
    with private_postgres() as server:
        yield server


@pytest.fixture(scope="module", params=["postgres", "mysql", "mysql-pymysql"])
def faulted(request):
    """Run the load, inject the faults, let it run on; keep every answer."""
    server = request.getfixturevalue("postgres_server") if request.param == "postgres" else None
    database = prepare(request.param, port=server.primary.port if server else None)
    kind = database.kind
    prefix = "flt" + secrets.token_hex(3)
    with cookbook(database) as app:
        load = Load(app.url, app.create_users(2 * CLIENTS, prefix), CLIENTS, PATTERN, prefix)
        load.start()
        try:
            load.wait_done(200)
            if kind == "postgres":
                faults, quiet_from = _terminate_and_restart(load, server)
            else:
                faults, quiet_from = _kill_in_transaction(load)
            load.wait_done(load.done + QUIET_REQUESTS)
        finally:
            load.stop()
        load.verify(database)
        log = app.server.log_text()
    quiet = load.started_after(quiet_from)
    figures = dict(faults, **load.figures(), requests_after_faults=len(quiet),
                   requests_after_faults_failed=len(load.failed(quiet)))
    record("faults", database.name, figures)
    return SimpleNamespace(kind=kind, load=load, faults=faults, quiet=quiet, log=log)


def _terminate_and_restart(load, server):
    """End every application backend, round after round, then restart the server once."""
    killer = SessionKiller("postgres", server.primary.port)
    try:
        for _ in range(TERMINATE_ROUNDS):
            killer.kill()
            load.wait_done(load.done + 25)
        terminated, in_transaction = killer.killed, killer.killed_in_transaction
    finally:
        killer.close()
    load.wait_done(load.done + 100)
    server.restart_node(server.primary)
    # Every backend died with the old server; requests from now on must all succeed.
    quiet_from = time.monotonic()
    return {"backends_terminated": terminated, "terminated_inside_a_transaction": in_transaction,
            "server_restarts": 1}, quiet_from


def _kill_in_transaction(load):
    """KILL application connections that are inside a transaction, until enough were."""
    killer = SessionKiller("mysql")
    ended = []
    try:
        deadline = time.monotonic() + 60
        while killer.killed_in_transaction < MIN_KILLS_IN_TRANSACTION:
            assert time.monotonic() < deadline, f"only {killer.killed_in_transaction} KILLs in 60 s"
            ended += killer.kill(lambda session: session.in_transaction)
        killer.wait_gone(ended)
    finally:
        killer.close()
    quiet_from = time.monotonic()
    return {"connections_killed_inside_a_transaction": killer.killed_in_transaction}, quiet_from


def test_faults_hit_requests_in_flight(faulted):
    assert faulted.load.failed(), "no request failed: the faults never hit a request in flight"


def test_no_acknowledged_write_is_lost(faulted):
    assert faulted.load.violations[LOST] == []


def test_no_write_of_a_failed_request_ever_appears(faulted):
    assert faulted.load.violations[LEAKED] == []


def test_requests_hit_by_a_fault_answer_500_or_503(faulted):
    assert faulted.load.violations[WRONG_ANSWER] == []


def test_every_503_says_when_to_retry(faulted):
    assert [o for o in faulted.load.outcomes if o.status == 503 and not o.retry_after] == []


def test_after_the_faults_every_request_succeeds_without_restarting_the_app(faulted):
    assert len(faulted.quiet) >= QUIET_REQUESTS
    assert faulted.load.failed(faulted.quiet) == []


# -- a connection that died while idle in the pool --------------------------------------


@pytest.mark.parametrize("name", ["postgres", "postgres-psycopg2", "mysql", "mysql-pymysql"])
def test_a_connection_that_died_while_idle_does_not_fail_the_next_request(name, request):
    port = request.getfixturevalue("postgres_server").primary.port if name.startswith("postgres") else None
    database = prepare(name, port=port)
    prefix = "idl" + secrets.token_hex(3)
    with cookbook(database) as app:
        load = Load(app.url, app.create_users(CLIENTS, prefix), CLIENTS, ("read", "write"), prefix)
        load.run(4)  # every thread of every process has used a connection
        killer = SessionKiller(database.kind, port)
        try:
            ended = killer.kill()
            killer.wait_gone(ended)
        finally:
            killer.close()
        after = time.monotonic()
        load.run(4)
    assert len(ended) >= PROCESSES, "the app's pools held no idle connection to end"
    assert load.broken() == []
    assert load.failed(load.started_after(after)) == []
    record("idle_connection_killed", name, {"connections_ended_while_idle": len(ended),
                                            "requests_after": len(load.started_after(after)),
                                            "requests_after_failed": len(load.failed(load.started_after(after)))})


# -- the database cannot be reached ----------------------------------------------------------


def _uri(kind, port):
    if kind == "postgres":  # trust authentication: the password only has to be masked
        return f"postgres://postgres:{PASSWORD}@127.0.0.1:{port}/{E2E_DB}"
    return f"mysql://txscope_e2e:{PASSWORD}@127.0.0.1:{port}/{E2E_DB}"


def _mysql_user():
    with admin_connection("mysql") as conn:
        cur = conn.cursor()
        for host in ("127.0.0.1", "localhost"):
            cur.execute(f"CREATE USER IF NOT EXISTS 'txscope_e2e'@'{host}' IDENTIFIED BY %s", (PASSWORD,))
            cur.execute(f"GRANT ALL PRIVILEGES ON {E2E_DB}.* TO 'txscope_e2e'@'{host}'")


@pytest.fixture(scope="module", params=SERVER_KINDS)
def outage(request):
    """The app behind a proxy: down from the start, back, down again (cutting its connections), back."""
    kind = request.param
    port = request.getfixturevalue("postgres_server").primary.port if kind == "postgres" else None
    database = prepare(kind, port=port)
    if kind == "mysql":
        _mysql_user()
    user_id = min(database.users())
    proxy = TcpProxy(port or 3306)
    phases = {}
    with cookbook(database, uri=_uri(kind, proxy.port)) as app:
        try:
            # The first outage began before the server did: its log starts at the top.
            start = 0
            for name, change in (("down", None), ("back", proxy.open), ("down again", proxy.close),
                                 ("back again", proxy.open)):
                if change:
                    start = app.log_size()
                    change()
                phases[name] = SimpleNamespace(answers=_burst(app.url, user_id), log=app.log_since(start))
        finally:
            proxy.close()
        log = app.server.log_text()
    down = [a for p in ("down", "down again") for a in phases[p].answers]
    record("database_unreachable", kind, {
        "outages": 2, "requests_while_down": len(down),
        "answered_503": sum(a.status == 503 for a in down),
        "unreachable_log_lines": sum(len(_outage_lines(phases[p].log)) for p in phases),
    })
    return SimpleNamespace(kind=kind, phases=phases, log=log)


def _burst(url, user_id):
    """Reads and writes of one row from every thread at once, enough to reach every process."""
    def one(n):
        if n % 2:
            return call(url, "POST", f"/api/users/{user_id}", {"fullname": f"outage test {n}"})
        return call(url, "GET", f"/api/users/{user_id}")

    with ThreadPoolExecutor(CLIENTS) as pool:
        return list(pool.map(one, range(3 * CLIENTS)))


def _outage_lines(log):
    return [line for line in log.splitlines() if "is unreachable" in line]


@pytest.mark.parametrize("phase", ["down", "down again"])
def test_unreachable_database_answers_503_with_retry_after(outage, phase):
    answers = outage.phases[phase].answers
    assert [(a.status, a.headers.get("retry-after")) for a in answers] == [(503, "5")] * len(answers)


@pytest.mark.parametrize("phase", ["down", "down again"])
def test_each_outage_is_logged_once_per_process_with_the_password_masked(outage, phase):
    lines = _outage_lines(outage.phases[phase].log)
    assert 1 <= len(lines) <= PROCESSES, lines
    for line in lines:
        assert f"{outage.kind}://" in line and ":***@127.0.0.1:" in line, line


def test_the_password_never_reaches_the_log(outage):
    assert PASSWORD not in outage.log


@pytest.mark.parametrize("phase", ["back", "back again"])
def test_service_is_back_as_soon_as_the_database_is(outage, phase):
    answers = outage.phases[phase].answers
    assert [a.status for a in answers] == [200] * len(answers), [str(a) for a in answers if a.status != 200]
