"""Behind PgBouncer in transaction pooling mode: no error, no wrong row, nothing left on a session.

PgBouncer in transaction mode hands each transaction whichever server
connection is free, so anything a client leaves on a *session* (a prepared
statement, a ``SET``) reaches other clients.  psycopg 3 prepares a statement
on the server after it ran ``prepare_threshold`` times (5 by default) on one
connection; behind the pooler the next execution may land on another server
connection, where the name means nothing or, worse, another statement.  The
package turns that off on every psycopg 3 connection it opens.

The semantic suite (commit, rollback, retries, read-only, isolation, lazy
begin) runs here again through a private PgBouncer, with both drivers: the
``backend`` fixtures below replace conftest's for the tests imported here.
"""

import threading

import pytest
from sqlobject import sqlhub

from conftest import DBNAME, Backend
from models import User
from pgbouncer import PgBouncer
from webpy_txscope import scope_options, txscope
from webapps import make_app

from test_features import (  # noqa: F401  (collected again, through PgBouncer)
    test_doom_rolls_back_but_keeps_the_response, test_isolation_is_not_left_on_the_pooled_connection,
    test_isolation_level_applies_to_the_request, test_on_commit_never_runs_after_rollback,
    test_on_commit_runs_after_commit_and_sees_the_data, test_options_after_the_first_statement_are_refused,
    test_per_handler_isolation, test_readonly_per_handler, test_readonly_scope_refuses_writes_and_keeps_nothing,
)
from test_processor import (  # noqa: F401
    test_5xx_http_errors_roll_back, test_control_flow_http_errors_below_500_commit,
    test_crash_after_write_rolls_back, test_every_path_returns_the_connection_clean,
    test_failed_commit_answers_500_and_keeps_nothing, test_interrupts_roll_back_and_propagate,
    test_nested_transaction_block_joins, test_normal_return_commits,
    test_request_that_never_touches_the_database_checks_out_nothing, test_streaming_body_commits_when_exhausted,
    test_streaming_body_that_raises_rolls_back, test_swallowed_statement_error_never_claims_success,
    test_transaction_block_commits, test_transaction_block_rolls_back_on_error,
)
from test_retry import (  # noqa: F401
    counter, server_counter, test_other_errors_are_not_retried,
    test_serializable_increments_with_retries_lose_nothing,
)

DRIVERS = ("psycopg", "psycopg2")
THREADS = 6
POOL_SIZE = 2
TRANSACTIONS_PER_THREAD = 150

# Parameters PgBouncer itself sets on a server connection to match each
# client's startup packet: its business, not the scope's.
PGBOUNCER_TRACKED = {"client_encoding", "datestyle", "timezone", "standard_conforming_strings",
                     "application_name"}
# SET TRANSACTION marks these as set by the session, yet every transaction
# starts again from the default_transaction_* settings checked below.
PER_TRANSACTION = {"transaction_isolation", "transaction_read_only", "transaction_deferrable"}


@pytest.fixture(scope="session")
def bouncer(_databases):
    """PgBouncer in transaction mode, 2 server connections, in front of this run's test database."""
    with PgBouncer(5432, DBNAME, pool_size=POOL_SIZE) as running:
        yield running


@pytest.fixture(scope="session", params=DRIVERS)
def backend(request, bouncer):
    """The test database through PgBouncer; `outside()` still reaches the server directly."""
    return Backend(f"postgres-{request.param}-pgbouncer", bouncer.uri(request.param))


@pytest.fixture(scope="session")
def server_backend(backend):
    return backend


@pytest.fixture
def server_scope(scope):
    return scope


# -- many clients, two server connections ----------------------------------------------------


def _reads(scope, user_ids, transactions, wrong, errors):
    """Transactions that repeat the same statements, each result checked for type and value."""
    for n in range(transactions):
        user_id = user_ids[n % len(user_ids)]
        try:
            with scope.transaction():
                fullname = User.get(user_id).fullname  # a fresh transaction cache: one SELECT each time
                count = User.select().count()
                rows = sqlhub.threadConnection.queryAll("SELECT id, name FROM users WHERE id <= 3 ORDER BY id")
        except Exception as e:
            errors.append(f"{type(e).__name__}: {e}")
            continue
        got = (fullname, count, [tuple(r) for r in rows])
        expected = (f"Full {user_id}", 3, [(1, "user1"), (2, "user2"), (3, "user3")])
        if got != expected:
            wrong.append(f"{got!r} instead of {expected!r}")


def test_many_clients_on_a_small_pool_get_their_own_rows_and_no_error(scope):
    wrong: list[str] = []
    errors: list[str] = []
    threads = [threading.Thread(target=_reads, args=(scope, [1 + t % 3, 1 + (t + 1) % 3],
                                                     TRANSACTIONS_PER_THREAD, wrong, errors))
               for t in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
    scope.connection.close()
    assert (wrong[:5], errors[:5]) == ([], [])
    assert len(wrong) + len(errors) == 0


# -- nothing the scope sets outlives its transaction -------------------------------------------


@pytest.fixture
def one_server_connection(_databases):
    """PgBouncer with one server connection: whatever a client leaves on it, the next one finds."""
    with PgBouncer(5432, DBNAME, pool_size=1) as running:
        yield running


def test_nothing_the_scope_sets_is_left_on_the_server_session(one_server_connection, scope, backend):
    driver = backend.name.split("-")[1]
    scope = txscope(one_server_connection.uri(driver), isolation="SERIALIZABLE", readonly=True)

    @scope_options(isolation="REPEATABLE READ", readonly=False)
    def write():
        User.get(1).fullname = "written"
        return "ok"

    app = make_app({"/read": lambda: User.get(1).fullname, "/write": write}, scope)
    for _ in range(8):  # more than psycopg 3's prepare_threshold of 5
        assert app.request("/read").status == "200 OK"
        assert app.request("/write").status == "200 OK"
    scope.connection.close()

    import psycopg2

    other = psycopg2.connect(host="127.0.0.1", port=one_server_connection.port, user="postgres", dbname=DBNAME)
    other.autocommit = True
    try:
        cur = other.cursor()
        cur.execute("SELECT lower(name) FROM pg_settings WHERE source = 'session'")
        session_settings = {name for (name,) in cur.fetchall()} - PGBOUNCER_TRACKED - PER_TRANSACTION
        cur.execute("SELECT name FROM pg_prepared_statements")
        prepared = cur.fetchall()
        cur.execute("SELECT current_setting('transaction_isolation'), current_setting('transaction_read_only')")
        characteristics = cur.fetchone()
    finally:
        other.close()
    assert session_settings == set()
    assert prepared == []
    assert characteristics == ("read committed", "off")
