"""Routing reads to streaming replicas (webpy_txscope/replicas.py), on a private primary and two replicas.

Lag is made deterministic with ``pg_wal_replay_pause()``: a paused replica
receives the primary's WAL but applies none of it, so it is behind for sure;
``recovery_min_apply_delay`` gives the real, timed delay of a busy replica.
"""

import logging
import time
from types import SimpleNamespace

import pytest
from sqlobject import connectionForURI

from pg_cluster import PgCluster
from webpy_txscope import ConfigurationError
from webpy_txscope import replicas as replicas_module
from webpy_txscope._tx import ScopeTransaction
from webpy_txscope.replicas import ReplicaRouter, format_lsn, is_write_on_replica, parse_lsn


@pytest.fixture(scope="module")
def cluster():
    with PgCluster(replicas=2) as running:
        running.primary.sql("CREATE TABLE notes (id integer PRIMARY KEY, body text NOT NULL)")
        running.primary.sql("INSERT INTO notes VALUES (1, 'first')")
        yield running


@pytest.fixture
def fresh(cluster):
    """Both replicas replaying, without delay, caught up."""
    for replica in cluster.replicas:
        cluster.resume(replica)
        cluster.set_apply_delay(replica, "0")
    cluster.wait_replayed()
    cluster.primary.sql("UPDATE notes SET body = 'first' WHERE id = 1")
    cluster.wait_replayed()
    for node in [cluster.primary, *cluster.replicas]:
        connectionForURI(node.uri()).close()  # an earlier test may have restarted the server
    return cluster


def make_router(cluster, **options):
    options.setdefault("replica_wait", 0.3)
    router = ReplicaRouter(connectionForURI(cluster.primary.uri()), [r.uri() for r in cluster.replicas],
                           **options)
    return router


def replica_named(router, node):
    return next(r for r in router.replicas if f":{node.port}/" in r.name)


def read_body(route):
    """The note as the routed server shows it, in a read-only transaction like a scope's."""
    tx = ScopeTransaction(route.connection, ("SET TRANSACTION READ ONLY",))
    try:
        return tx.queryOne("SELECT body FROM notes WHERE id = 1")[0]
    finally:
        tx.rollback()


def write_body(router, body):
    """A request on the primary that commits a new body; returns the client's new cookie value."""
    route = router.route("POST")
    assert not route.on_replica
    route.connection.query(f"UPDATE notes SET body = '{body}' WHERE id = 1")
    return router.position_after(route, touched=True)


# -- which server -------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE"])
def test_unsafe_methods_run_on_the_primary(fresh, method):
    assert not make_router(fresh).route(method).on_replica


@pytest.mark.parametrize("method", ["GET", "HEAD", "OPTIONS"])
def test_safe_methods_read_on_a_replica(fresh, method):
    assert make_router(fresh).route(method).on_replica


def test_a_handler_can_keep_its_reads_on_the_primary(fresh):
    assert not make_router(fresh).route("GET", replica=False).on_replica


def test_reads_spread_over_the_replicas(fresh):
    router = make_router(fresh)
    used = {router.route("GET").replica.name for _ in range(10)}
    assert len(used) == 2


# -- session consistency: read your writes, never go back in time ------------------------------------


def test_a_client_reads_its_own_write_even_from_delayed_replicas(fresh):
    for replica in fresh.replicas:
        fresh.set_apply_delay(replica, "200ms")
    router = make_router(fresh, replica_wait=1.0)
    on_replicas = 0
    for n in range(10):
        cookie = write_body(router, f"write {n}")
        route = router.route("GET", cookie)
        on_replicas += route.on_replica
        assert read_body(route) == f"write {n}"
    assert on_replicas >= 5  # the replicas served once they had replayed the write
    assert router.stats()["replica_waits"] >= 5


def test_without_the_cookie_delayed_replicas_show_the_old_value(fresh):
    """The proof that the test above can see a stale read: the same steps, the cookie dropped
    (a longer delay, so that a busy machine cannot hide it)."""
    for replica in fresh.replicas:
        fresh.set_apply_delay(replica, "1s")
    router = make_router(fresh, replica_wait=1.0)
    stale = 0
    for n in range(3):
        write_body(router, f"uncookied {n}")
        stale += read_body(router.route("GET", None)) != f"uncookied {n}"
    assert stale == 3


def test_a_replica_behind_the_client_is_not_used_and_the_primary_answers_in_time(fresh):
    for replica in fresh.replicas:
        fresh.pause(replica)
    router = make_router(fresh, replica_wait=0.2)
    cookie = write_body(router, "while paused")
    started = time.monotonic()
    route = router.route("GET", cookie)
    waited = time.monotonic() - started
    assert not route.on_replica and read_body(route) == "while paused"
    assert 0.15 <= waited < 1.0
    assert router.stats()["replica_fallbacks"] == 1


def test_a_replica_is_used_again_as_soon_as_it_replayed_the_clients_write(fresh):
    first, second = fresh.replicas
    fresh.pause(first)
    router = make_router(fresh)
    cookie = write_body(router, "second has it")
    fresh.wait_replayed(second)
    for _ in range(6):
        route = router.route("GET", cookie)
        assert route.replica is replica_named(router, second)
        assert read_body(route) == "second has it"


def test_reads_never_go_back_in_time_across_replicas(fresh):
    ahead, behind = fresh.replicas
    fresh.pause(behind)
    router = make_router(fresh)
    fresh.primary.sql("UPDATE notes SET body = 'someone else wrote' WHERE id = 1")  # another client
    fresh.wait_replayed(ahead)
    # This client has no position yet and happens to read the new value on the replica ahead.
    route = router.route("GET", None)
    while route.replica is not replica_named(router, ahead):
        route = router.route("GET", None)
    assert read_body(route) == "someone else wrote"
    cookie = router.position_after(route, touched=True)
    assert cookie is not None
    for _ in range(6):  # the replica behind would show the old value: it must not serve this client
        route = router.route("GET", cookie)
        assert route.replica is not replica_named(router, behind)
        assert read_body(route) == "someone else wrote"


def test_a_scope_that_touched_nothing_leaves_the_cookie_alone(fresh):
    router = make_router(fresh)
    assert router.position_after(router.route("GET", "0/1"), touched=False) is None
    assert router.position_after(router.route("POST", "0/1"), touched=False) is None


@pytest.mark.parametrize("cookie", ["", "nonsense", "0/", "G/1", "1/2/3", "x" * 5000, "-1/-1"])
def test_a_malformed_cookie_is_ignored(fresh, cookie):
    route = make_router(fresh).route("GET", cookie)
    assert route.on_replica and route.position is None


def test_a_forged_position_beyond_the_primary_is_capped_and_never_waits(fresh):
    router = make_router(fresh, replica_wait=5.0)
    started = time.monotonic()
    route = router.route("GET", "FFFFFFFF/FFFFFFFF")
    assert time.monotonic() - started < 1.0
    assert route.on_replica  # capped at the primary's position, which the replicas have replayed
    new = router.position_after(route, touched=True)
    assert parse_lsn(new) <= parse_lsn(fresh.position())  # the forged position is not handed back


# -- strong consistency: no stale read for anyone --------------------------------------------------


def test_strong_reads_see_every_acknowledged_write_of_anyone(fresh):
    for replica in fresh.replicas:
        fresh.set_apply_delay(replica, "200ms")
    router = make_router(fresh, consistency="strong", replica_wait=1.0)
    on_replicas = 0
    for n in range(8):
        fresh.primary.sql(f"UPDATE notes SET body = 'strong {n}' WHERE id = 1")  # another client, no cookie
        route = router.route("GET", None)
        on_replicas += route.on_replica
        assert read_body(route) == f"strong {n}"
    assert on_replicas >= 4


def test_strong_consistency_sets_no_cookie(fresh):
    router = make_router(fresh, consistency="strong")
    assert router.position_after(router.route("POST"), touched=True) is None


# -- health ---------------------------------------------------------------------------------------------


def serve_read(router, cookie=None):
    """What the adapters do with a route: read there; a replica lost on the way sends the read to the primary."""
    route = router.route("GET", cookie)
    try:
        return route, read_body(route)
    except Exception as e:
        assert router.rerun_on_primary(route, SimpleNamespace(failure=None), e)
        route = router.primary_route(route)
        return route, read_body(route)


def test_an_unreachable_replica_is_skipped_logged_once_and_used_again_when_back(fresh, caplog, monkeypatch):
    monkeypatch.setattr(replicas_module, "BACKOFF_FIRST", 0.05)
    down, up = fresh.replicas
    router = make_router(fresh)
    for _ in range(4):
        serve_read(router)  # both replicas served and are known
    fresh.stop_node(down)
    try:
        with caplog.at_level(logging.WARNING, logger="webpy_txscope"):
            answers = [serve_read(router) for _ in range(40)]
            assert {body for _, body in answers} == {"first"}
            assert {route.replica.name for route, _ in answers[2:] if route.on_replica} == \
                {replica_named(router, up).name}
            fresh.start_node(down)
            deadline = time.monotonic() + 10
            while serve_read(router)[0].replica is not replica_named(router, down):
                assert time.monotonic() < deadline, "the replica never served again"
                time.sleep(0.02)
    finally:
        if not down.is_up():
            fresh.start_node(down)
    messages = [r.getMessage() for r in caplog.records if r.name == "webpy_txscope"]
    assert len([m for m in messages if "unreachable" in m]) == 1, messages
    assert len([m for m in messages if "reachable again" in m]) == 1, messages
    assert "replica_reruns" in router.stats() and router.stats()["replica_reruns"] == 1


def test_with_every_replica_down_reads_go_to_the_primary(fresh):
    router = make_router(fresh)
    for _ in range(4):
        serve_read(router)  # both replicas served and are known
    for replica in fresh.replicas:
        fresh.stop_node(replica)
    try:
        answers = [serve_read(router) for _ in range(6)]
    finally:
        for replica in fresh.replicas:
            fresh.start_node(replica)
    assert [body for _, body in answers] == ["first"] * 6
    assert not any(route.on_replica for route, _ in answers[2:])  # each replica failed once, then was skipped


def test_a_replica_lagging_more_than_max_replica_lag_is_left_out(fresh):
    behind, current = fresh.replicas
    fresh.pause(behind)
    fresh.primary.sql("UPDATE notes SET body = 'lag' WHERE id = 1")
    fresh.wait_replayed(current)
    time.sleep(1.2)  # the paused replica's lag grows past the limit
    router = make_router(fresh, max_replica_lag=0.5)
    for _ in range(6):
        assert router.route("GET").replica is replica_named(router, current)


def test_a_write_on_a_replica_is_recognized(fresh):
    route = make_router(fresh).route("GET")
    tx = ScopeTransaction(route.connection, ("SET TRANSACTION READ ONLY",))
    try:
        with pytest.raises(Exception) as refused:
            tx.query("UPDATE notes SET body = 'nope' WHERE id = 1")
    finally:
        tx.rollback()
    assert is_write_on_replica(refused.value)
    assert not is_write_on_replica(ValueError("a bug"))


# -- bad input ---------------------------------------------------------------------------------------


def test_a_replica_that_is_the_primary_is_refused(fresh):
    primary = connectionForURI(fresh.primary.uri())
    with pytest.raises(ConfigurationError, match="is the primary itself"):
        ReplicaRouter(primary, [f"postgres://app:s3cretpw@localhost:{fresh.primary.port}/test"])


# MySQL URIs name mysqlclient: SQLObject's PyMySQL driver installs PyMySQL as
# "MySQLdb" for the whole process, which breaks the mysqlclient tests after it.
@pytest.mark.parametrize("primary, replica, message", [
    ("mysql://root@127.0.0.1/test?driver=mysqldb", "mysql://root@127.0.0.1:3307/test?driver=mysqldb",
     "supported on PostgreSQL only"),
    ("sqlite:/:memory:", "sqlite:/:memory:", "SQLite has no replicas"),
    ("postgres://app:s3cretpw@127.0.0.1/test", "mysql://app:s3cretpw@127.0.0.1/test?driver=mysqldb",
     "is not a PostgreSQL database"),
    ("postgres://app:s3cretpw@127.0.0.1/test", "postgres://app:s3cretpw@127.0.0.1/test?driver=psycopg2",
     "is the primary itself"),
    ("postgres://app:s3cretpw@127.0.0.1/test", "postgres://app:s3cretpw@127.0.0.1:5433/test?driver=psycopg2",
     "uses the driver psycopg2, the primary psycopg"),
])
def test_replicas_of_other_databases_are_refused_without_showing_a_password(primary, replica, message):
    with pytest.raises(ConfigurationError, match=message) as refused:
        txscope(primary, replicas=[replica])
    assert "s3cretpw" not in str(refused.value)


def test_a_single_uri_instead_of_a_list_is_refused(fresh):
    with pytest.raises(ConfigurationError, match="list of PostgreSQL URIs"):
        ReplicaRouter(connectionForURI(fresh.primary.uri()), fresh.replicas[0].uri())


def test_positions_read_and_write_as_postgresql_spells_them():
    assert format_lsn(parse_lsn("16/B374D848")) == "16/B374D848"


# -- through txscope and TxScopeMiddleware ----------------------------------------------------------

import web  # noqa: E402
from sqlobject import sqlhub  # noqa: E402

from webapps import make_app  # noqa: E402
from webpy_txscope import TxScopeMiddleware, on_commit, scope_options, stats, txscope  # noqa: E402


def server_of():
    """Where the handler's statements run, as the server says: (recovering, read only)."""
    row = sqlhub.threadConnection.queryOne("SELECT pg_is_in_recovery(), current_setting('transaction_read_only')")
    return f"{'replica' if row[0] else 'primary'} {row[1]}"


def note():
    return sqlhub.threadConnection.queryOne("SELECT body FROM notes WHERE id = 1")[0]


def save(body):
    sqlhub.threadConnection.query(f"UPDATE notes SET body = '{body}' WHERE id = 1")
    return "saved"


def cookie_of(response):
    value = dict(response.header_items).get("Set-Cookie", "")
    return value.split(";")[0] if value.startswith("txscope_pos=") else None


@pytest.fixture
def routed(fresh):
    """A txscope on the private primary with its two replicas, and the web.py app of these tests."""
    scope = txscope(fresh.primary.uri(), replicas=[r.uri() for r in fresh.replicas], replica_wait=0.3)
    app = make_app({"/where": server_of, "/note": note, "/save/(.*)": save}, scope)
    return scope, app


def test_a_get_reads_on_a_replica_in_a_read_only_transaction(routed):
    _, app = routed
    assert app.request("/where").data == b"replica on"


def test_a_post_writes_on_the_primary_and_hands_the_client_its_position(routed, fresh):
    _, app = routed
    response = app.request("/save/posted", method="POST")
    assert (response.status, response.data) == ("200 OK", b"saved")
    assert parse_lsn(cookie_of(response).split("=")[1]) >= parse_lsn("0/1")
    assert app.request("/where", method="POST").data == b"primary off"


def test_the_position_cookie_makes_the_next_read_see_the_write(routed, fresh):
    _, app = routed
    for replica in fresh.replicas:
        fresh.pause(replica)
    cookie = cookie_of(app.request("/save/mine", method="POST"))
    assert app.request("/note", headers={"Cookie": f"theme=dark; {cookie}"}).data == b"mine"
    assert app.request("/note").data == b"first"  # without it: a replica's old value (the proof)


def test_a_read_served_by_a_replica_raises_the_clients_position(routed, fresh):
    _, app = routed
    fresh.primary.sql("UPDATE notes SET body = 'newer' WHERE id = 1")
    fresh.wait_replayed()
    response = app.request("/note", headers={"Cookie": "txscope_pos=0/1"})
    assert response.data == b"newer"
    assert parse_lsn(cookie_of(response).split("=")[1]) >= parse_lsn(fresh.position()) - 8192


def test_a_get_that_writes_runs_again_on_the_primary_and_its_first_attempt_leaves_nothing(routed, fresh):
    _, app = routed
    attempts, hooks = [], []

    def handler():
        attempts.append(server_of())
        on_commit(hooks.append, len(attempts))
        return save("written by a GET")

    app = make_app({"/": handler}, routed[0])
    response = app.request("/")
    assert (response.status, response.data) == ("200 OK", b"saved")
    assert attempts == ["replica on", "primary off"]
    assert hooks == [2]
    assert fresh.primary.sql("SELECT body FROM notes WHERE id = 1") == [("written by a GET",)]
    assert cookie_of(response) is not None  # a write: the client must read it back


def test_a_get_that_swallows_the_refused_write_still_runs_again_on_the_primary(routed, fresh):
    attempts = []

    def handler():
        attempts.append(server_of())
        try:
            save("swallowed")
        except Exception:
            return "claims nothing was written"
        return "saved"

    response = make_app({"/": handler}, routed[0]).request("/")
    assert (response.data, len(attempts)) == (b"saved", 2)
    assert fresh.primary.sql("SELECT body FROM notes WHERE id = 1") == [("swallowed",)]


def test_a_handler_marked_replica_false_reads_on_the_primary(routed):
    class Page:
        @scope_options(replica=False)
        def GET(self):
            web.header("Content-Type", "text/plain")
            return server_of()

    app = web.application(("/", "page"), {"page": Page})  # noqa: TXS101 - the processor is added below
    app.add_processor(routed[0])
    assert app.request("/").data == b"primary off"


def test_a_replica_that_is_down_costs_no_failed_request(routed, fresh, caplog):
    _, app = routed
    for _ in range(4):
        app.request("/note")  # both replicas served
    down = fresh.replicas[0]
    fresh.stop_node(down)
    try:
        responses = [app.request("/note") for _ in range(20)]
    finally:
        fresh.start_node(down)
    assert {(r.status, r.data) for r in responses} == {("200 OK", b"first")}
    assert not any("answering 503" in r.getMessage() for r in caplog.records)


def test_a_get_that_never_touches_the_database_routes_nothing(fresh):
    scope = txscope(fresh.primary.uri(), replicas=[r.uri() for r in fresh.replicas], consistency="strong")
    asked = []
    real = scope.manager.router.primary_probes.query
    scope.manager.router.primary_probes.query = lambda sql: asked.append(sql) or real(sql)
    app = make_app({"/free": lambda: "no database", "/note": note}, scope)
    before = stats()
    response = app.request("/free")
    assert (response.data, cookie_of(response)) == (b"no database", None)
    assert asked == []  # strong consistency's round trip to the primary is for reads only
    counted = ("replica_reads", "primary_reads", "untouched", "commits", "rollbacks")
    assert {k: stats()[k] - before[k] for k in counted} == \
        {"replica_reads": 0, "primary_reads": 0, "untouched": 1, "commits": 0, "rollbacks": 0}
    assert app.request("/note").data == b"first" and len(asked) == 1


def test_replica_reads_are_counted(routed):
    _, app = routed
    before = stats()
    app.request("/note")
    app.request("/save/counted", method="POST")
    after = stats()
    assert after["replica_reads"] - before["replica_reads"] == 1
    assert after["commits"] - before["commits"] == 2


def test_the_middleware_routes_and_hands_out_the_position_too(fresh):
    from paste.fixture import TestApp

    def app(environ, start_response):
        body = (save("by wsgi") if environ["REQUEST_METHOD"] == "POST" else note()).encode()
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [body]

    wrapped = TestApp(TxScopeMiddleware(app, fresh.primary.uri(), replicas=[r.uri() for r in fresh.replicas],
                                        replica_wait=0.3))
    for replica in fresh.replicas:
        fresh.pause(replica)
    posted = wrapped.post("/", "")
    cookie = dict(posted.headers)["Set-Cookie"].split(";")[0]
    assert wrapped.get("/", headers={"Cookie": cookie}).body == b"by wsgi"
    assert TestApp(TxScopeMiddleware(app, fresh.primary.uri(), replicas=[r.uri() for r in fresh.replicas],
                                     replica_wait=0.3)).get("/").body == b"first"


def test_without_replicas_nothing_changes_on_the_request_path(fresh):
    scope = txscope(fresh.primary.uri())
    assert scope.manager.router is None
    assert "finish" not in vars(scope.manager)  # the class's finish step, not the routed one
    app = make_app({"/": note}, scope)
    response = app.request("/")
    assert response.data == b"first" and cookie_of(response) is None


@pytest.mark.parametrize("options, message", [
    (dict(consistency="eventual"), "unknown consistency 'eventual'"),
    (dict(replica_wait=-1), "replica_wait must be"),
    (dict(replica_wait=float("nan")), "replica_wait must be"),
    (dict(max_replica_lag="1s"), "max_replica_lag must be"),
])
def test_bad_replica_options_fail_when_the_app_starts(fresh, options, message):
    with pytest.raises(ConfigurationError, match=message):
        txscope(fresh.primary.uri(), replicas=[r.uri() for r in fresh.replicas], **options)
    with pytest.raises(ConfigurationError, match=message):
        TxScopeMiddleware(lambda e, s: [], fresh.primary.uri(), replicas=[r.uri() for r in fresh.replicas],
                          **options)


@pytest.mark.parametrize("primary, message", [
    ("sqlite:/:memory:", "SQLite has no replicas"),
    ("mysql://root:s3cretpw@127.0.0.1/test?driver=mysqldb", "supported on PostgreSQL only"),
])
def test_replicas_of_mysql_and_sqlite_fail_when_the_app_starts(primary, message):
    with pytest.raises(ConfigurationError, match=message) as refused:
        txscope(primary, replicas=["postgres://app:s3cretpw@127.0.0.1:5433/test"])
    assert "s3cretpw" not in str(refused.value)


def test_a_form_saved_and_redirected_hands_out_the_position_with_the_redirect(routed, fresh):
    def handler():
        save("redirected")
        raise web.seeother("/note")

    for replica in fresh.replicas:
        fresh.pause(replica)
    app = make_app({"/save": handler, "/note": note}, routed[0])
    response = app.request("/save", method="POST")
    assert response.status.startswith("303")
    assert app.request("/note", headers={"Cookie": cookie_of(response)}).data == b"redirected"


def test_replicas_from_a_pastedeploy_section(fresh):
    from webpy_txscope.wsgi import filter_app_factory

    middleware = filter_app_factory(lambda e, s: [], {}, uri=fresh.primary.uri(),
                                    replicas=f"{fresh.replicas[0].uri()},\n{fresh.replicas[1].uri()}",
                                    consistency="strong", replica_wait="0.2")
    router = middleware.manager.router
    assert (len(router.replicas), router.consistency, router.replica_wait) == (2, "strong", 0.2)


def test_a_forked_child_probes_on_connections_of_its_own(fresh):
    import os

    router = make_router(fresh, consistency="strong")
    assert router.route("GET").on_replica  # the parent holds probe connections now
    parent_probes = list(router.primary_probes._idle)
    assert parent_probes
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            code = 0 if router.route("GET").on_replica and not set(router.primary_probes._idle) & set(parent_probes) \
                else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 0
    assert router.route("GET").on_replica  # the parent's own connections still work
