"""Writes from outside the package: PostgreSQL triggers, and the listener that keeps the cache right.

Every test writes the way psql or a cron job does (a plain autocommit
connection, no scope) on real PostgreSQL, against both stores: a
memory-mapped file ("local") and the machine's Redis, database 13, which these
tests flush (and only it).  Faults are real: a database restarted (a private
cluster, never the machine's server), connections cut or frozen by a proxy,
Redis made unreachable.  Waits are polls with a deadline on what the listener
did, never sleeps.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import threading
import time

import pytest
from conftest import BACKENDS, Backend, _fresh_scope
from e2e_support import TcpProxy
from pg_cluster import PgCluster
from test_sharedcache import flushed_redis, store_spec

from models import User, create_tables
from webpy_txscope import (ConfigurationError, SharedCache, install_cache_triggers, remove_cache_triggers,
                           txscope)
from webpy_txscope import _cachelisten, sharedcache
from webpy_txscope._cachelisten import MARK, TRIGGER
from webpy_txscope._cachestore import LocalStore
from webpy_txscope._tx import ScopeTransaction
from webpy_txscope._uri import open_connection

REDIS_URL = "redis://127.0.0.1:6379/13"
LEASE = 5.0
DEADLINE = 20.0
PG_BACKENDS = ["postgres-psycopg", "postgres-psycopg2"]


def wait_until(condition, what: str, timeout: float = DEADLINE) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.002)


def counted(name: str):
    before = sharedcache.counts[name]
    return lambda: sharedcache.counts[name] - before


# -- fixtures --------------------------------------------------------------------------------


@pytest.fixture(params=PG_BACKENDS)
def pg(request, _databases):
    return Backend(request.param, BACKENDS[request.param])


@pytest.fixture
def pg_scope(pg):
    yield from _fresh_scope(pg)


@pytest.fixture
def redis_db():
    yield from flushed_redis(REDIS_URL)


@pytest.fixture(params=["local", "redis"])
def spec(request, tmp_path):
    return store_spec(request, tmp_path, REDIS_URL)


@pytest.fixture
def watched(pg_scope, pg):
    """The users table with the trigger, removed afterwards."""
    assert install_cache_triggers(pg.uri, User) == ["users"]
    yield pg_scope
    remove_cache_triggers(pg.uri)


@pytest.fixture
def listeners():
    """Caches made by a test; their listeners are stopped afterwards."""
    made: list[SharedCache] = []
    yield made
    for cache in made:
        listener = cache.store.listener
        if listener is not None:
            listener.stop()


def settle(cache: SharedCache) -> SharedCache:
    """*cache* with its store past the warm-up lease a new store starts with."""
    store = cache.store.store
    store.read(("users",))
    if isinstance(store, LocalStore):
        store._HEADER.pack_into(store._map, 0, store.MAGIC, 0)
    else:
        store._client.delete(f"{store.prefix}:warm")
    assert store.read(("users",))[1] is False
    return cache


def listening(listeners, spec: str, uri: str, listen=True) -> SharedCache:
    """A cache that listens, given to a txscope on *uri*, its listener connected."""
    cache = SharedCache(spec, lease=LEASE, listen=listen)
    listeners.append(cache)
    txscope(uri, cache=cache)
    settle(cache)
    return ready(cache)


def ready(cache: SharedCache) -> SharedCache:
    listener = cache.store.listener
    listener.start()
    wait_until(lambda: listener.ready, "the listener connected")
    return cache


def read(cache: SharedCache, uri: str, user_id: int = 1) -> str:
    t = cache.transaction_class(open_connection(uri))
    try:
        return User.get(user_id, connection=t).fullname
    finally:
        t.commit(close=True)


def count(cache: SharedCache, uri: str) -> int:
    t = cache.transaction_class(open_connection(uri))
    try:
        return User.select(connection=t).count()
    finally:
        t.commit(close=True)


def rename(cache: SharedCache, uri: str, value: str, user_id: int = 1) -> None:
    t = cache.transaction_class(open_connection(uri))
    User.get(user_id, connection=t).fullname = value
    t.commit(close=True)


def announced(since):
    """Wait until the listener replaced a token since *since* (a counter from :func:`counted`)."""
    wait_until(lambda: since() > 0, "the listener replaced the announced table's token")


def token(cache: SharedCache, table: str = "users") -> bytes:
    """The table's own token (not its rows' or its selects'): what a notification replaces."""
    return cache.store.store.read((table,))[0][0]


def sentinel(backend, cache: SharedCache) -> None:
    """Send a notification from outside and wait for its token to change: notifications are delivered
    in commit order, so every one committed before it was handled too."""
    before = token(cache, "txscope_sentinel")
    backend.sql(f"SELECT pg_notify('{_cachelisten.CHANNEL}', 'txscope_sentinel')")
    wait_until(lambda: token(cache, "txscope_sentinel") != before, "the sentinel notification arrived")


# -- outside writes ------------------------------------------------------------------------------

OUTSIDE_WRITES = {
    "update": ("UPDATE users SET fullname = 'outside' WHERE id = 1", "outside", 3),
    "insert": ("INSERT INTO users (id, name, fullname, password) VALUES (4, 'user4', 'Full 4', 'x')", "Full 1", 4),
    "delete": ("DELETE FROM users WHERE id = 3", "Full 1", 2),
    "truncate": ("TRUNCATE users", None, 0),
}


@pytest.mark.parametrize("write", list(OUTSIDE_WRITES))
def test_an_outside_write_is_seen_by_the_next_read_once_its_notification_arrived(
        watched, pg, spec, listeners, write):
    statement, fullname, users = OUTSIDE_WRITES[write]
    cache = listening(listeners, spec, pg.uri)
    for _ in range(2):
        assert read(cache, pg.uri) == "Full 1" and count(cache, pg.uri) == 3
    since, hits = counted("cache_trigger_invalidations"), counted("cache_hits")
    pg.sql(statement)
    announced(since)
    assert count(cache, pg.uri) == users
    if fullname is None:
        with pytest.raises(Exception, match="1"):
            read(cache, pg.uri)
    else:
        assert read(cache, pg.uri) == fullname
    assert hits() == 0


def test_without_listening_an_outside_write_leaves_the_entry_stale(watched, pg, spec):
    # The proof that the test above can see a stale entry.
    cache = SharedCache(spec, lease=LEASE)
    txscope(pg.uri, cache=cache)
    store = cache.store
    store.read(("users",))
    if isinstance(store, LocalStore):
        store._HEADER.pack_into(store._map, 0, store.MAGIC, 0)
    else:
        store._client.delete(f"{store.prefix}:warm")
    assert read(cache, pg.uri) == "Full 1"
    pg.sql("UPDATE users SET fullname = 'outside' WHERE id = 1")
    assert read(cache, pg.uri) == "Full 1"


def test_a_rolled_back_outside_write_announces_nothing(watched, pg, spec, listeners):
    cache = listening(listeners, spec, pg.uri)
    before = token(cache)
    conn = pg.outside()
    try:
        conn.autocommit = False
        conn.cursor().execute("UPDATE users SET fullname = 'never' WHERE id = 1")
        conn.rollback()
    finally:
        conn.close()
    sentinel(pg, cache)
    assert token(cache) == before
    assert read(cache, pg.uri) == "Full 1"


# -- the package's own writes ---------------------------------------------------------------------


def test_the_packages_own_write_is_not_announced_and_keeps_the_other_rows_entries(watched, pg, spec, listeners):
    cache = listening(listeners, spec, pg.uri)
    assert read(cache, pg.uri, 2) == "Full 2"
    before = token(cache)
    rename(cache, pg.uri, "new")
    t = cache.transaction_class(open_connection(pg.uri))
    User(name="user4", fullname="Full 4", password="x", connection=t)  # an insert alone is named too
    t.commit(close=True)
    sentinel(pg, cache)
    assert token(cache) == before, "the trigger announced a write that replaced its own tokens"
    hits = counted("cache_hits")
    assert read(cache, pg.uri, 2) == "Full 2"
    assert hits() == 1, "row 2's entry was made stale by a write of row 1"
    assert read(cache, pg.uri, 1) == "new"


def test_a_listening_scope_names_the_table_it_writes_once_before_its_first_write_and_never_for_reads(
        watched, pg, spec, listeners):
    cache = listening(listeners, spec, pg.uri)
    sent: list[str] = []
    original = ScopeTransaction.query

    def spy(self, s):
        sent.append(s)
        return original(self, s)

    ScopeTransaction.query = spy
    try:
        assert read(cache, pg.uri) == "Full 1"
        marks_for_a_read = sum(s.startswith("SELECT set_config") for s in sent)
        t = cache.transaction_class(open_connection(pg.uri))
        User.get(1, connection=t).fullname = "a"
        User.get(2, connection=t).fullname = "b"
        User(name="user9", fullname="Full 9", password="x", connection=t)
        t.commit(close=True)
    finally:
        ScopeTransaction.query = original
    marks = [i for i, s in enumerate(sent) if s == MARK.format("'users'")]
    assert marks_for_a_read == 0
    assert len(marks) == 1 and sum(s.startswith("SELECT set_config") for s in sent) == 1
    assert marks[0] < min(i for i, s in enumerate(sent) if s.startswith("UPDATE"))


def test_a_mark_undone_with_a_savepoint_is_sent_again_before_the_next_write(watched, pg, spec, listeners):
    cache = listening(listeners, spec, pg.uri)
    before = token(cache)
    t = cache.transaction_class(open_connection(pg.uri))
    point = t.savepoint()
    User.get(1, connection=t).fullname = "undone"
    t.rollback_to(point)  # undoes the write and the SET LOCAL sent before it
    User.get(2, connection=t).fullname = "kept"
    t.commit(close=True)
    sentinel(pg, cache)
    assert token(cache) == before, "the write after the savepoint was announced: its transaction was unmarked"
    assert (read(cache, pg.uri, 1), read(cache, pg.uri, 2)) == ("Full 1", "kept")


def test_a_write_a_trigger_makes_under_a_package_write_is_announced(watched, pg, spec, listeners):
    # The package sees its UPDATE of users, not the row a user's trigger adds to another table.
    pg.sql("DROP TABLE IF EXISTS audit")
    pg.sql("CREATE TABLE audit (id SERIAL PRIMARY KEY, user_id INT)")
    pg.sql("CREATE OR REPLACE FUNCTION audit_users() RETURNS trigger LANGUAGE plpgsql AS "
           "$$ BEGIN INSERT INTO audit (user_id) VALUES (NEW.id); RETURN NULL; END $$")
    pg.sql("CREATE TRIGGER audit_users AFTER UPDATE ON users FOR EACH ROW EXECUTE FUNCTION audit_users()")
    try:
        install_cache_triggers(pg.uri, "audit")
        cache = listening(listeners, spec, pg.uri)
        audited = [_count(cache, pg.uri, "audit") for _ in range(2)]
        assert audited == [0, 0]
        since = counted("cache_trigger_invalidations")
        rename(cache, pg.uri, "new")
        announced(since)
        assert _count(cache, pg.uri, "audit") == 1
    finally:
        pg.sql("DROP TRIGGER IF EXISTS audit_users ON users")
        pg.sql("DROP TABLE IF EXISTS audit")
        pg.sql("DROP FUNCTION IF EXISTS audit_users()")


def test_rows_of_the_same_table_a_trigger_writes_under_a_package_write_are_announced(
        watched, pg, spec, listeners):
    # The package replaces row 1's token; the trigger (depth 2) changes row 2 of the same table.
    pg.sql("CREATE OR REPLACE FUNCTION follow_user_1() RETURNS trigger LANGUAGE plpgsql AS "
           "$$ BEGIN UPDATE users SET fullname = 'follows ' || NEW.fullname WHERE id = 2; RETURN NULL; END $$")
    pg.sql("CREATE TRIGGER follow_user_1 AFTER UPDATE ON users FOR EACH ROW WHEN (NEW.id = 1) "
           "EXECUTE FUNCTION follow_user_1()")
    try:
        cache = listening(listeners, spec, pg.uri)
        assert [read(cache, pg.uri, 2) for _ in range(2)] == ["Full 2", "Full 2"]
        since = counted("cache_trigger_invalidations")
        rename(cache, pg.uri, "new")
        announced(since)
        assert read(cache, pg.uri, 2) == "follows new"
    finally:
        pg.sql("DROP TRIGGER IF EXISTS follow_user_1 ON users")
        pg.sql("DROP FUNCTION IF EXISTS follow_user_1()")


def test_rows_a_cascade_deletes_under_a_package_write_are_announced(watched, pg, spec, listeners):
    pg.sql("DROP TABLE IF EXISTS kids")
    pg.sql("DROP TABLE IF EXISTS moms")
    pg.sql("CREATE TABLE moms (id INT PRIMARY KEY)")
    pg.sql("CREATE TABLE kids (id INT PRIMARY KEY, mom INT REFERENCES moms (id) ON DELETE CASCADE)")
    pg.sql("INSERT INTO moms VALUES (1)")
    pg.sql("INSERT INTO kids VALUES (1, 1), (2, 1)")
    try:
        install_cache_triggers(pg.uri, "moms", "kids")
        cache = listening(listeners, spec, pg.uri)
        assert [_count(cache, pg.uri, "kids") for _ in range(2)] == [2, 2]
        since = counted("cache_trigger_invalidations")
        t = cache.transaction_class(open_connection(pg.uri))
        t.query("DELETE FROM moms WHERE id = 1")  # the package sees a write of moms only
        t.commit(close=True)
        announced(since)
        assert _count(cache, pg.uri, "kids") == 0
    finally:
        pg.sql("DROP TABLE IF EXISTS kids")
        pg.sql("DROP TABLE IF EXISTS moms")


def _count(cache, uri, table) -> int:
    t = cache.transaction_class(open_connection(uri))
    try:
        return t.queryOne(f"SELECT COUNT(*) FROM {table}")[0]
    finally:
        t.commit(close=True)


# -- the listener's faults --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster():
    with PgCluster() as c:
        yield c


@pytest.fixture
def private_pg(cluster):
    """The users table on a private cluster, with the trigger; the cluster may be restarted."""
    uri = cluster.primary.uri(driver="psycopg2")
    connection = open_connection(uri)
    create_tables(connection)
    cluster.primary.sql("TRUNCATE users")
    cluster.primary.sql("INSERT INTO users (id, name, fullname, password) VALUES "
                        "(1, 'user1', 'Full 1', 'x'), (2, 'user2', 'Full 2', 'x')")
    install_cache_triggers(uri, User)
    yield uri
    connection.close()


def test_a_restart_stops_the_cache_until_the_listener_is_back_and_then_every_watched_table_is_invalidated(
        cluster, private_pg, spec, listeners):
    # The listener reaches the database through a proxy: closed, it is down for sure while
    # the database restarts and a psql session writes, whatever its retry timing.
    node = cluster.primary
    proxy = TcpProxy(node.port)
    proxy.open()
    try:
        cache = listening(listeners, spec, private_pg, listen=f"postgres://postgres@127.0.0.1:{proxy.port}/test")
        listener = cache.store.listener
        assert [read(cache, private_pg) for _ in range(2)] == ["Full 1", "Full 1"]
        proxy.close()
        wait_until(lambda: not listener.ready, "the listener noticed it lost its connection")
        cluster.restart_node(node)
        node.sql("UPDATE users SET fullname = 'outside' WHERE id = 1")  # nobody listens: not delivered
        hits, bypasses = counted("cache_hits"), counted("cache_bypasses")
        assert read(cache, private_pg) == "outside"
        assert hits() == 0 and bypasses() >= 1
        since = counted("cache_trigger_invalidations")
        proxy.open()
        ready(cache)
        assert since() == 1  # the one watched table, users
        assert read(cache, private_pg) == "outside"
        assert read(cache, private_pg) == "outside" and hits() == 1
    finally:
        proxy.close()


def test_a_reader_that_read_tokens_before_the_outage_stores_nothing_trusted_after_the_reconnect(
        cluster, private_pg, spec, listeners):
    node = cluster.primary
    proxy = TcpProxy(node.port)
    proxy.open()
    try:
        cache = listening(listeners, spec, private_pg, listen=f"postgres://postgres@127.0.0.1:{proxy.port}/test")
        listener = cache.store.listener
        queried, go = threading.Event(), threading.Event()
        put = cache._put

        def late_put(*args):
            queried.set()  # tokens and the old row were read while the listener was up
            assert go.wait(DEADLINE)
            put(*args)

        cache._put = late_put
        seen: list[str] = []
        reader = threading.Thread(target=lambda: seen.append(read(cache, private_pg)))
        reader.start()
        assert queried.wait(DEADLINE)
        cache._put = put
        proxy.close()
        wait_until(lambda: not listener.ready, "the listener noticed it lost its connection")
        node.sql("UPDATE users SET fullname = 'outside' WHERE id = 1")
        proxy.open()
        ready(cache)
        go.set()  # the old row is stored now, tagged with the tokens read before the outage
        reader.join(DEADLINE)
        assert seen == ["Full 1"]
        assert read(cache, private_pg) == "outside"
    finally:
        proxy.close()


class FreezingProxy(TcpProxy):
    """A proxy whose connections can stop passing bytes without closing: a network that drops silently.

    New connections pass; only those open when :meth:`freeze` was called are frozen.
    """

    def __init__(self, target_port: int):
        super().__init__(target_port)
        self._frozen: set[int] = set()

    def freeze(self) -> None:
        with self._lock:
            self._frozen = {sock.fileno() for sock in self._pairs}

    def _pump(self, source, sink) -> None:
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                if source.fileno() in self._frozen or sink.fileno() in self._frozen:
                    continue  # dropped
                sink.sendall(data)
        except OSError:
            pass
        try:
            sink.shutdown(2)
        except OSError:
            pass


def test_a_heartbeat_without_an_answer_stops_the_cache_and_the_listener_reconnects(
        watched, pg, spec, listeners, monkeypatch):
    monkeypatch.setattr(_cachelisten, "PING_TIMEOUT", 0.3)
    proxy = FreezingProxy(5432)
    proxy.open()
    try:
        cache = SharedCache(spec, lease=LEASE, listen=pg.uri.replace("127.0.0.1/", f"127.0.0.1:{proxy.port}/"))
        listeners.append(cache)
        txscope(pg.uri, cache=cache)
        listener = cache.store.listener
        listener.heartbeat = 0.1
        ready(settle(cache))
        assert [read(cache, pg.uri) for _ in range(2)] == ["Full 1", "Full 1"]
        proxy.freeze()
        pg.sql("UPDATE users SET fullname = 'outside' WHERE id = 1")  # its notification is dropped
        wait_until(lambda: listener.pinging and time.monotonic() - listener.pinging > 0.3,
                   "a heartbeat went unanswered for longer than PING_TIMEOUT")
        hits = counted("cache_hits")
        assert read(cache, pg.uri) == "outside"
        ready(cache)
        assert read(cache, pg.uri) == "outside"
        assert hits() == 0
    finally:
        proxy.close()


def test_a_notification_the_store_could_not_take_stops_the_cache_until_every_watched_table_is_invalidated(
        watched, pg, redis_db, listeners):
    proxy = TcpProxy(6379)
    proxy.open()
    try:
        cache = listening(listeners, f"redis://127.0.0.1:{proxy.port}/13", pg.uri)
        listener, store = cache.store.listener, cache.store.store
        assert [read(cache, pg.uri) for _ in range(2)] == ["Full 1", "Full 1"]
        proxy.close()
        pg.sql("UPDATE users SET fullname = 'outside' WHERE id = 1")
        wait_until(lambda: not listener.ready, "the listener gave up trusting the cache")
        assert read(cache, pg.uri) == "outside"
        proxy.open()
        ready(cache)
        wait_until(lambda: time.monotonic() >= store._retry_at, "the store is asked again")
        misses = counted("cache_misses")
        assert read(cache, pg.uri) == "outside"
        assert misses() == 1  # served by the cache's path, not bypassed
    finally:
        proxy.close()


def _child_after_fork(uri, cache, results) -> None:
    """In a forked child: an outside write before this process's listener connected, then reads."""
    Backend("postgres-psycopg2", uri).sql("UPDATE users SET fullname = 'outside' WHERE id = 1")
    listener = cache.store.listener
    seen = [read(cache, uri)]  # not ready yet: from the database
    ready(cache)
    seen += [read(cache, uri), read(cache, uri)]
    results.put((seen, listener._thread is not None and listener._thread.is_alive()))


def test_a_forked_child_starts_its_own_listener_and_drops_the_entries_it_inherited(
        watched, pg, spec, listeners):
    cache = listening(listeners, spec, pg.uri)
    listener = cache.store.listener
    assert [read(cache, pg.uri) for _ in range(2)] == ["Full 1", "Full 1"]
    # The parent's listener ends, so that no one replaces the tokens: only the child can protect itself.
    listener._stopping.set()
    os.write(listener._wake[1], b"x")
    listener._thread.join(DEADLINE)
    ctx = multiprocessing.get_context("fork")
    results = ctx.Queue()
    child = ctx.Process(target=_child_after_fork, args=(pg.uri, cache, results))
    child.start()
    try:
        seen, own_thread = results.get(timeout=DEADLINE)
    finally:
        child.join(DEADLINE)
    assert seen == ["outside", "outside", "outside"]
    assert own_thread and child.exitcode == 0


# -- installing -------------------------------------------------------------------------------------


def _triggers(backend) -> list[tuple[str, int]]:
    return backend.sql(f"SELECT tgrelid::regclass::text, count(*) FROM pg_trigger WHERE tgname = '{TRIGGER}' "
                       "GROUP BY 1 ORDER BY 1")


def test_installing_is_idempotent_and_removing_takes_everything_away(pg_scope, pg):
    pg.sql("CREATE TABLE IF NOT EXISTS \"Mixed Case\" (id INT)")
    try:
        for _ in range(2):
            assert install_cache_triggers(pg.uri, User, '"Mixed Case"') == ["users", "Mixed Case"]
        assert _triggers(pg) == [('"Mixed Case"', 1), ("users", 1)]
        assert remove_cache_triggers(pg.uri, User) == ["users"]
        assert _triggers(pg) == [('"Mixed Case"', 1)]
        everything = install_cache_triggers(pg.uri)  # every table
        assert {"users", "Mixed Case"} <= set(everything)
        assert sorted(remove_cache_triggers(pg.uri)) == sorted(everything)
        assert _triggers(pg) == []
        assert pg.sql(f"SELECT count(*) FROM pg_proc WHERE proname = '{TRIGGER}'") == [(0,)]
        assert remove_cache_triggers(pg.uri) == []
    finally:
        pg.sql("DROP TABLE IF EXISTS \"Mixed Case\"")


def test_installing_on_a_table_that_does_not_exist_names_it_and_changes_nothing(pg_scope, pg):
    for name in ("nosuchtable", "Mixed Case"):
        with pytest.raises(ConfigurationError, match=f"no table '{name}'"):
            install_cache_triggers(pg.uri, User, name)
    assert _triggers(pg) == []


@pytest.mark.parametrize("kind", ["sqlite", "mysql"])
def test_other_databases_are_refused_with_the_alternative(kind, tmp_path):
    uri = f"sqlite:{tmp_path / 'test.db'}" if kind == "sqlite" else BACKENDS["mysql-mysqlclient"]
    with pytest.raises(ConfigurationError, match="needs PostgreSQL.*invalidate"):
        install_cache_triggers(uri)
    with pytest.raises(ConfigurationError, match="needs PostgreSQL"):
        txscope(uri, cache=SharedCache(f"local:{tmp_path / 'tokens'}", listen=True))


def test_a_driver_that_cannot_listen_is_refused(tmp_path):
    # Only psycopg and psycopg2 are installed here: another driver is named on a connection of its own.
    connection = open_connection("postgres://postgres@127.0.0.1/txscope_driver_check?driver=psycopg2")
    connection.driver = "pg8000"
    with pytest.raises(ConfigurationError, match="needs the psycopg or psycopg2 driver, not pg8000"):
        SharedCache(f"local:{tmp_path / 'tokens'}", listen=connection)


def test_a_cache_that_listens_to_no_database_reads_everything_from_the_database(pg_scope, pg, tmp_path):
    cache = SharedCache(f"local:{tmp_path / 'tokens'}", lease=LEASE, listen=True)
    hits = counted("cache_hits")
    assert [read(cache, pg.uri) for _ in range(2)] == ["Full 1", "Full 1"]
    assert hits() == 0


# -- logs -------------------------------------------------------------------------------------------


def test_the_listener_never_shows_the_password(watched, pg, tmp_path, listeners, caplog):
    proxy = TcpProxy(5432)
    uri = f"postgres://postgres:s3cretpw@127.0.0.1:{proxy.port}/{pg.uri.split('/')[-1]}"
    cache = SharedCache(f"local:{tmp_path / 'tokens'}", lease=LEASE, listen=uri)
    listeners.append(cache)
    txscope(pg.uri, cache=cache)
    settle(cache)
    listener = cache.store.listener
    with caplog.at_level(logging.DEBUG, logger="webpy_txscope"):
        listener.start()
        wait_until(lambda: "cannot connect" in caplog.text or "not connected" in caplog.text,
                   "the refused connection was logged")
        read(cache, pg.uri)  # bypassed, saying why
        proxy.open()
        ready(cache)
        proxy.close()
        wait_until(lambda: not listener.ready, "the listener lost its connection")
        proxy.open()
        ready(cache)
        proxy.close()
    assert "refused" in caplog.text.lower() and "is back" in caplog.text
    assert "cache bypassed (the cache listener on" in caplog.text
    for text in (caplog.text, repr(listener), repr(cache), listener.why, listener._thread.name):
        assert "s3cretpw" not in text
