"""The shared cache (cache=) and read replicas (replicas=) together, on a private primary and a replica.

The replica applies the primary's commits late (``recovery_min_apply_delay``,
or not at all while ``pg_wal_replay_pause()`` holds it, where a test needs it
to lag for sure), so a read that the replica answers with an old row is
visible.  Two apps on one token store stand for two processes: each has
entries of its own.  The fault tests run a Redis of their own behind a proxy
they can cut.
"""

from __future__ import annotations

import logging
import subprocess
import time

import pytest
import redis
import web
from sqlobject import connectionForURI, sqlhub

from e2e_support import TcpProxy
from models import User, create_tables
from pg_cluster import PgCluster, free_port
from test_sharedcache import settled
from webapps import make_app
from webpy_txscope import TxScopeMiddleware, scope_options, stats, txscope
from webpy_txscope.replicas import parse_lsn


@pytest.fixture(scope="module")
def cluster():
    with PgCluster(replicas=1) as running:
        create_tables(connectionForURI(running.primary.uri()))
        yield running


@pytest.fixture
def fresh(cluster):
    """Three users, on the primary and replayed by the replica; the replica replaying without delay."""
    replica = cluster.replicas[0]
    cluster.resume(replica)
    cluster.set_apply_delay(replica, "0")
    cluster.primary.sql("DELETE FROM users")
    for i in (1, 2, 3):
        cluster.primary.sql("INSERT INTO users (id, name, fullname, password) VALUES (%s, %s, %s, 'x')",
                            i, f"user{i}", f"Full {i}")
    cluster.primary.sql("SELECT setval('users_id_seq', 3)")
    cluster.wait_replayed()
    for node in (cluster.primary, replica):
        connectionForURI(node.uri()).close()
    return cluster


@pytest.fixture
def spec(tmp_path):
    return f"local:{tmp_path / 'tokens'}"


def cached_routed(cluster, spec, **options):
    options.setdefault("replica_wait", 0.3)
    scope = txscope(cluster.primary.uri(), replicas=[r.uri() for r in cluster.replicas], cache=spec, **options)
    settled(scope.manager.cache)
    return scope


def show(user_id):
    return User.get(int(user_id)).fullname


def rename(user_id):
    User.get(int(user_id)).fullname = web.input().fullname
    return "renamed"


@scope_options(replica=False)
def rename_on_primary(user_id):
    return rename(user_id)


def page(user_id):
    """A page that reads the user twice: by id (a cached Model.get), then by a select of its own."""
    by_id = User.get(int(user_id)).fullname
    selected = sqlhub.threadConnection.queryOne(f"SELECT fullname FROM users WHERE id = {int(user_id)} AND 1 = 1")
    return f"{by_id}|{selected[0]}"


def page_select_first(user_id):
    """The same reads in the other order: the select, then the Model.get."""
    selected = sqlhub.threadConnection.queryOne(f"SELECT fullname FROM users WHERE id = {int(user_id)} AND 1 = 1")
    return f"{selected[0]}|{User.get(int(user_id)).fullname}"


@scope_options(cache=False)
def show_uncached(user_id):
    return show(user_id)


def app_for(scope):
    return make_app({"/user/(\\d+)": show, "/uncached/(\\d+)": show_uncached, "/rename/(\\d+)": rename,
                     "/rename-primary/(\\d+)": rename_on_primary, "/page/(\\d+)": page,
                     "/page-select-first/(\\d+)": page_select_first}, scope)


def cookie_of(response):
    value = dict(response.header_items).get("Set-Cookie", "")
    return value.split(";")[0] if value.startswith("txscope_pos=") else None


def counted():
    before = stats()
    return lambda name: stats()[name] - before[name]


def body(response) -> str:
    assert response.status == "200 OK", (response.status, response.data)
    return response.data.decode()


# -- every write replaces the tokens, whichever scope made it ----------------------------------------------


@pytest.mark.parametrize("how", ["replica=False", "fallback", "rerun", "after-an-entry"])
def test_a_get_that_writes_on_the_primary_replaces_the_tokens(fresh, spec, how):
    """However a GET's write reaches the primary (a handler kept off the replicas, no replica far
    enough, a write the replica refused, a read served by the cache first), the entries of every
    process made before it are stale."""
    app, other = app_for(cached_routed(fresh, spec)), app_for(cached_routed(fresh, spec))
    for each in (app, other) if how == "after-an-entry" else (other,):
        assert body(each.request("/user/1", method="POST")) == "Full 1"  # on the primary: stored
    headers = {}
    if how == "fallback":
        fresh.pause(fresh.replicas[0])
        fresh.primary.sql("UPDATE users SET fullname = 'Full 2' WHERE id = 2")
        headers["Cookie"] = f"txscope_pos={fresh.position()}"  # a position the replica has not replayed
    path = "/rename-primary/1" if how == "replica=False" else "/rename/1"
    delta = counted()
    assert body(app.request(f"{path}?fullname=new", headers=headers)) == "renamed"
    assert (delta("replica_reruns"), delta("replica_fallbacks"), delta("cache_hits")) == \
        (how == "rerun", how == "fallback", how == "after-an-entry")
    assert fresh.primary.sql("SELECT fullname FROM users WHERE id = 1") == [("new",)]
    for each in (app, other):
        assert body(each.request("/user/1", method="POST")) == "new"


def test_a_get_that_writes_on_the_primary_leases_before_commit_and_replaces_after(fresh, spec):
    scope = cached_routed(fresh, spec)
    store = scope.manager.cache.store
    seen = []
    begin_write, end_write = store.begin_write, store.end_write

    def watched(step, change):
        def run(tables, writer):
            seen.append((step, fresh.primary.sql("SELECT fullname FROM users WHERE id = 1")[0][0]))
            change(tables, writer)
        return run

    store.begin_write, store.end_write = watched("lease", begin_write), watched("replace", end_write)
    assert body(app_for(scope).request("/rename-primary/1?fullname=new")) == "renamed"
    assert seen == [("lease", "Full 1"), ("replace", "new")]  # the row as others saw it at each step


# -- reads on a replica: served, never stored -------------------------------------------------------------


def test_a_read_on_a_replica_never_stores_an_entry(fresh, spec, caplog):
    app, writer = app_for(cached_routed(fresh, spec)), app_for(cached_routed(fresh, spec))
    fresh.pause(fresh.replicas[0])
    assert body(writer.request("/rename/1", method="POST", data={"fullname": "new"})) == "renamed"
    delta = counted()
    with caplog.at_level(logging.DEBUG, logger="webpy_txscope"):
        # Another client, no position: the lagging replica answers with the old row (session allows it).
        assert body(app.request("/user/1")) == "Full 1"
    assert (delta("replica_reads"), delta("cache_misses"), delta("cache_bypasses")) == (1, 1, 1)
    assert "not stored: read on a replica" in caplog.text
    # Had the replica's old row been stored, it would carry the new tokens and be served here.
    assert body(app.request("/user/1", method="POST")) == "new"


def test_a_replica_routed_get_is_served_a_current_entry_without_routing(fresh, spec):
    app, writer = app_for(cached_routed(fresh, spec)), app_for(cached_routed(fresh, spec))
    fresh.pause(fresh.replicas[0])
    assert body(writer.request("/rename/1", method="POST", data={"fullname": "new"})) == "renamed"
    assert body(app.request("/user/1", method="POST")) == "new"  # stored, on the primary
    delta = counted()
    assert body(app.request("/user/1")) == "new"  # the paused replica still has "Full 1"
    assert {name: delta(name) for name in ("cache_hits", "replica_reads", "primary_reads", "commits")} == \
        {"cache_hits": 1, "replica_reads": 0, "primary_reads": 0, "commits": 1}


def test_with_strong_consistency_a_get_served_from_the_cache_asks_the_primary_nothing(fresh, spec):
    scope = cached_routed(fresh, spec, consistency="strong")
    asked = []
    real = scope.manager.router.primary_probes.query
    scope.manager.router.primary_probes.query = lambda sql: asked.append(sql) or real(sql)
    app = app_for(scope)
    assert body(app.request("/user/1", method="POST")) == "Full 1"
    asked.clear()
    response = app.request("/user/1")
    assert (body(response), asked, cookie_of(response)) == ("Full 1", [], None)


def test_a_get_marked_cache_false_is_never_served(fresh, spec):
    app = app_for(cached_routed(fresh, spec))
    assert body(app.request("/user/1", method="POST")) == "Full 1"
    delta = counted()
    assert body(app.request("/uncached/1")) == "Full 1"
    assert (delta("cache_hits"), delta("cache_bypasses"), delta("replica_reads")) == (0, 1, 1)


# -- the consistency modes still hold ----------------------------------------------------------------------


@pytest.mark.parametrize("consistency", ["session", "strong"])
def test_a_client_reads_its_own_write_from_the_cache_and_the_delayed_replica(fresh, spec, consistency):
    fresh.set_apply_delay(fresh.replicas[0], "150ms")
    app, other = app_for(cached_routed(fresh, spec, consistency=consistency, replica_wait=1.0)), \
        app_for(cached_routed(fresh, spec, consistency=consistency, replica_wait=1.0))
    delta = counted()
    cookie = ""
    for n in range(6):
        written = app.request("/rename/1", method="POST", data={"fullname": f"write {n}"})
        cookie = cookie_of(written) or cookie
        for each in (app, other):
            # A miss (on the replica once it replayed the write, or the primary), an entry stored on
            # the primary, the entry served.
            assert body(each.request("/page/1", headers={"Cookie": cookie})) == f"write {n}|write {n}"
            assert body(each.request("/user/1", method="POST")) == f"write {n}"
            assert body(each.request("/user/1", headers={"Cookie": cookie})) == f"write {n}"
    assert delta("cache_hits") >= 12 and delta("replica_reads") >= 6


def test_after_an_entry_the_rest_of_the_request_never_reads_an_older_replica(fresh, spec):
    """Session consistency: the entry shows the present; the lagging replica would show the past."""
    app, writer = app_for(cached_routed(fresh, spec)), app_for(cached_routed(fresh, spec))
    fresh.pause(fresh.replicas[0])
    writer.request("/rename/1", method="POST", data={"fullname": "new"})
    assert body(app.request("/user/1", method="POST")) == "new"  # an entry of the new row
    delta = counted()
    assert body(app.request("/page/1")) == "new|new"  # by id from the entry, the select on the primary
    assert (delta("cache_hits"), delta("replica_reads"), delta("primary_reads")) == (1, 0, 1)
    assert body(app.request("/uncached/1")) == "Full 1"  # the proof: without an entry, the replica's past


@pytest.mark.parametrize("path, shown", [("/user/1", "new"), ("/page-select-first/1", "Full 1|new")],
                         ids=["entries-only", "replica-then-entry"])
def test_a_get_served_from_the_cache_hands_the_client_the_primarys_position(fresh, spec, path, shown):
    """Session consistency: after an entry of the present, the client's next read must not go back,
    also when the request read on the lagging replica before it was served."""
    app, writer = app_for(cached_routed(fresh, spec)), app_for(cached_routed(fresh, spec))
    fresh.pause(fresh.replicas[0])
    writer.request("/rename/1", method="POST", data={"fullname": "new"})
    written = parse_lsn(fresh.position())
    assert body(app.request("/user/1", method="POST")) == "new"
    delta = counted()
    response = app.request(path)
    assert body(response) == shown and delta("cache_hits") == 1
    cookie = cookie_of(response)
    assert cookie is not None and parse_lsn(cookie.split("=")[1]) >= written
    # Its next read is not served by the cache, and the paused replica has not replayed what it was shown.
    assert body(app.request("/uncached/1", headers={"Cookie": cookie})) == "new"
    assert body(app.request("/uncached/1")) == "Full 1"  # without the cookie: the replica's past (the proof)


def asked_of_the_primary(scope) -> list:
    """The statements the router sends the primary for positions, from now on."""
    asked: list = []
    real = scope.manager.router.primary_probes.query
    scope.manager.router.primary_probes.query = lambda sql: asked.append(sql) or real(sql)
    return asked


def lsn_of(cookie: str) -> int:
    return parse_lsn(cookie.split("=", 1)[1])


def test_a_get_served_only_stamped_entries_hands_out_their_position_without_asking_the_primary(fresh, spec):
    """Session consistency: an entry carries the primary's position asked when the request that stored
    it ended, past what it shows; a request served only such entries hands that on, with no round trip."""
    scope = cached_routed(fresh, spec)
    app, writer = app_for(scope), app_for(cached_routed(fresh, spec))
    asked = asked_of_the_primary(scope)
    fresh.pause(fresh.replicas[0])
    writer.request("/rename/1", method="POST", data={"fullname": "new"})
    written = parse_lsn(fresh.position())
    stored = app.request("/user/1", method="POST")
    assert body(stored) == "new" and len(asked) == 1  # the entry, stored on the primary, and its position
    fresh.primary.sql("CREATE TABLE IF NOT EXISTS wal_filler (n int); INSERT INTO wal_filler VALUES (1)")
    asked.clear()
    response = app.request("/user/1")
    assert (body(response), asked) == ("new", [])
    cookie = cookie_of(response)
    assert cookie == cookie_of(stored) and written <= lsn_of(cookie) < parse_lsn(fresh.position())
    # What it was shown, the paused replica has not replayed: its next read waits for the primary.
    assert body(app.request("/uncached/1", headers={"Cookie": cookie})) == "new"
    assert body(app.request("/uncached/1")) == "Full 1"  # without the cookie: the replica's past (the proof)


def test_an_entry_stored_outside_a_request_has_no_position_so_serving_it_asks_the_primary(fresh, spec):
    scope = cached_routed(fresh, spec)
    app, writer = app_for(scope), app_for(cached_routed(fresh, spec))
    fresh.pause(fresh.replicas[0])
    writer.request("/rename/1", method="POST", data={"fullname": "new"})
    written = parse_lsn(fresh.position())
    with scope.transaction():
        assert User.get(1).fullname == "new"  # stored by a script's scope: no client, no position
    asked = asked_of_the_primary(scope)
    delta = counted()
    response = app.request("/user/1")
    assert (body(response), delta("cache_hits"), len(asked)) == ("new", 1, 1)
    cookie = cookie_of(response)
    assert cookie is not None and lsn_of(cookie) >= written
    assert body(app.request("/uncached/1", headers={"Cookie": cookie})) == "new"


SECOND = "SELECT fullname FROM users WHERE id = 2 AND 1 = 1"


def first_and_second():
    return f"{User.get(1).fullname}|{sqlhub.threadConnection.queryOne(SECOND)[0]}"


def test_one_entry_without_a_position_among_stamped_ones_makes_the_request_ask_the_primary(fresh, spec):
    """The stamped entry is older than the other: its position alone would send the client back."""
    scope = cached_routed(fresh, spec)
    app = make_app({"/both": first_and_second, "/uncached/(\\d+)": show_uncached}, scope)
    assert body(app.request("/both", method="POST")) == "Full 1|Full 2"  # both stored and stamped
    fresh.wait_replayed()
    fresh.pause(fresh.replicas[0])  # it has replayed the stamps' position, not what follows
    with scope.transaction():
        User.get(2).fullname = "new 2"  # replaces row 2's token and the selects': row 1's entry stays
    with scope.transaction():
        assert sqlhub.threadConnection.queryOne(SECOND)[0] == "new 2"  # stored by a script: no position
    written = parse_lsn(fresh.position())
    delta = counted()
    response = app.request("/both")
    assert (body(response), delta("cache_hits")) == ("Full 1|new 2", 2)
    cookie = cookie_of(response)
    assert cookie is not None and lsn_of(cookie) >= written
    assert body(app.request("/uncached/2", headers={"Cookie": cookie})) == "new 2"
    assert body(app.request("/uncached/2")) == "Full 2"  # without the cookie: the replica's past (the proof)


def test_the_middleware_composes_the_cache_and_the_replicas_too(fresh, spec):
    from paste.fixture import TestApp

    def wsgi_app(environ, start_response):
        user = User.get(1)
        if environ["PATH_INFO"] == "/rename":
            user.fullname = "by wsgi"
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [user.fullname.encode()]

    def client():
        middleware = TxScopeMiddleware(wsgi_app, fresh.primary.uri(), replicas=[r.uri() for r in fresh.replicas],
                                       cache=spec, replica_wait=0.3)
        settled(middleware.manager.cache)
        return TestApp(middleware)

    one, other = client(), client()
    assert other.post("/", "").body == b"Full 1"  # an entry, on the primary
    delta = counted()
    assert other.get("/").body == b"Full 1"
    assert (delta("cache_hits"), delta("replica_reads")) == (1, 0)
    fresh.pause(fresh.replicas[0])
    fresh.primary.sql("UPDATE users SET fullname = 'Full 2' WHERE id = 2")
    assert one.get("/rename", headers={"Cookie": f"txscope_pos={fresh.position()}"}).body == b"by wsgi"
    assert delta("replica_fallbacks") == 1  # the GET wrote on the primary
    assert other.post("/", "").body == b"by wsgi"


# -- faults: the cache's failure rules on a GET that writes ------------------------------------------------


@pytest.fixture(scope="module")
def private_redis():
    """A Redis server of this module's own on a free port (the fault tests cut it with a proxy)."""
    port = free_port()
    try:
        server = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                   "--appendonly", "no"], stdout=subprocess.DEVNULL)
    except FileNotFoundError:
        pytest.fail("redis-server is not installed: apt-get install -y redis-server")
    client = redis.Redis(port=port)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            assert time.monotonic() < deadline, "the private redis-server did not start"
            time.sleep(0.02)
    yield port
    client.close()
    server.terminate()
    server.wait(10)


@pytest.fixture
def redis_proxy(private_redis):
    redis.Redis(port=private_redis).flushdb()
    proxy = TcpProxy(private_redis)
    proxy.open()
    yield proxy
    proxy.close()


def test_a_get_whose_write_the_store_cannot_mark_is_rolled_back_and_answers_503(fresh, redis_proxy, caplog):
    app = app_for(cached_routed(fresh, f"redis://127.0.0.1:{redis_proxy.port}/0"))
    redis_proxy.close()
    assert body(app.request("/user/2")) == "Full 2"  # reads go to the database
    answer = app.request("/rename-primary/2?fullname=refused")
    assert answer.status.startswith("503")  # rolled back before COMMIT: a service outage, not a bug
    assert fresh.primary.sql("SELECT fullname FROM users WHERE id = 2") == [("Full 2",)]
    assert "the write was rolled back" in caplog.text


def test_a_get_whose_invalidation_failed_after_commit_answers_500(fresh, redis_proxy, private_redis, caplog):
    other = app_for(cached_routed(fresh, f"redis://127.0.0.1:{private_redis}/0"))  # its Redis stays reachable
    assert body(other.request("/user/1", method="POST")) == "Full 1"
    scope = cached_routed(fresh, f"redis://127.0.0.1:{redis_proxy.port}/0")
    store = scope.manager.cache.store
    begin_write = store.begin_write

    def then_lose_the_store(tables, writer):
        begin_write(tables, writer)
        redis_proxy.close()

    store.begin_write = then_lose_the_store
    answer = app_for(scope).request("/rename-primary/1?fullname=new")
    assert answer.status.startswith("500")
    assert fresh.primary.sql("SELECT fullname FROM users WHERE id = 1") == [("new",)]  # durable
    assert "the write was committed, but" in caplog.text
    assert body(other.request("/user/1", method="POST")) == "new"
