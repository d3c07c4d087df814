"""The shared cache (webpy_txscope.sharedcache): never stale, never uncommitted, loud on faults.

Each test drives real transactions on every database against a real store:
a memory-mapped file ("local") and the machine's Redis, database 11, which
these tests flush (and only it).  Interleavings that matter (a reader whose
snapshot predates a commit, a writer killed between its COMMIT and its second
token replacement) are driven step by step with events, and the writer is
killed with SIGKILL in its own process.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import threading

import pytest
import redis
from sqlobject import ForeignKey, SQLObject, SQLObjectNotFound, StringCol, sqlhub
from e2e_support import TcpProxy

from models import User
from webpy_txscope import sharedcache
from webpy_txscope._cachestore import LocalStore, RedisStore, StoreUnavailable
from webpy_txscope._sqltables import READ, classify_sql
from webpy_txscope._tx import ScopeTransaction
from webpy_txscope.sharedcache import CacheUnavailable, InvalidationFailed, SharedCache

REDIS_URL = "redis://127.0.0.1:6379/11"
LEASE = 5.0  # long enough for every step of a test to run inside one lease
READ_COMMITTED = ("SET TRANSACTION ISOLATION LEVEL READ COMMITTED",)


def flushed_redis(url: str):
    """A client of the Redis database *url*, flushed before and after (the body of a fixture)."""
    client = redis.Redis.from_url(url)
    try:
        client.ping()
    except redis.RedisError as e:
        pytest.fail(f"Redis is not reachable on 127.0.0.1:6379 ({e}); start it with: redis-server --daemonize yes "
                    "--bind 127.0.0.1 --port 6379 --save '' --appendonly no")
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


def store_spec(request, tmp_path, url: str) -> str:
    """The ``cache=`` of a test parametrized over "local" and "redis" (the body of a fixture)."""
    if request.param == "redis":
        request.getfixturevalue("redis_db")
        return url
    return f"local:{tmp_path / 'tokens'}"


@pytest.fixture
def redis_db():
    yield from flushed_redis(REDIS_URL)


@pytest.fixture(params=["local", "redis"])
def spec(request, tmp_path):
    return store_spec(request, tmp_path, REDIS_URL)


def settled(cache: SharedCache) -> SharedCache:
    """*cache* with its store past the warm-up lease a new store starts with."""
    store = cache.store
    if isinstance(store, LocalStore):
        store.read(("users",))
        store._HEADER.pack_into(store._map, 0, store.MAGIC, 0)
    else:
        store.read(("users",))
        store._client.delete(f"{store.prefix}:warm")
    assert store.read(("users",))[1] is False
    return cache


def make_cache(spec: str, **options) -> SharedCache:
    options.setdefault("lease", LEASE)
    return settled(SharedCache(spec, **options))


def begin_for(backend) -> tuple:
    # MariaDB's default REPEATABLE READ bypasses the cache; these tests cache on every database.
    return READ_COMMITTED if backend.kind == "mysql" else ()


def tx(cache: SharedCache, scope, backend, begin=None):
    return cache.transaction_class(scope.connection, begin_for(backend) if begin is None else begin)


def fullname(cache, scope, backend, user_id=1) -> str:
    t = tx(cache, scope, backend)
    try:
        return User.get(user_id, connection=t).fullname
    finally:
        t.commit(close=True)


def rename(cache, scope, backend, value, user_id=1) -> None:
    t = tx(cache, scope, backend)
    User.get(user_id, connection=t).fullname = value
    t.commit(close=True)


@pytest.fixture
def counts():
    before = dict(sharedcache.counts)
    return lambda: {k: v - before[k] for k, v in sharedcache.counts.items()}


# -- hits and misses ---------------------------------------------------------------------


def test_a_read_repeated_in_another_transaction_is_served_without_a_connection(scope, backend, tmp_path, counts):
    cache = make_cache(f"local:{tmp_path / 'tokens'}")
    for _ in range(2):
        t = tx(cache, scope, backend)
        assert User.get(3, connection=t).fullname == "Full 3"
        assert [u.name for u in User.select(User.q.id <= 2, orderBy="id", connection=t)] == ["user1", "user2"]
        began = t._raw is not None
        t.commit(close=True)
    assert not began, "a hit checked out a connection"
    assert counts()["cache_hits"] == 2 and counts()["cache_misses"] == 2


def test_counts_and_selects_are_cached_and_made_stale_by_an_insert(scope, backend, tmp_path):
    cache = make_cache(f"local:{tmp_path / 'tokens'}")
    for _ in range(2):
        t = tx(cache, scope, backend)
        assert User.select(connection=t).count() == 3
        assert len(list(User.select(connection=t))) == 3
        t.commit(close=True)
    t = tx(cache, scope, backend)
    User(name="user4", fullname="Full 4", password="x", connection=t)
    t.commit(close=True)
    t = tx(cache, scope, backend)
    assert User.select(connection=t).count() == 4
    assert len(list(User.select(connection=t))) == 4
    t.commit(close=True)


def test_every_statement_sqlobject_sends_for_the_cookbook_model_is_a_read_of_its_table(scope, backend):
    conn = scope.connection
    statements = [
        conn.queryForSelect(User.select(User.q.id == 1, connection=conn)),
        conn.queryForSelect(User.select(orderBy="name", connection=conn)[2:5]),
        conn.queryForSelect(User.selectBy(conn, name="user1")),
    ]
    for sql in statements:
        assert classify_sql(sql) == (READ, ("users",)), sql
    seen = []
    t = ScopeTransaction(conn)
    original = ScopeTransaction.queryOne
    try:
        ScopeTransaction.queryOne = lambda self, s: (seen.append(s), original(self, s))[1]
        User.get(2, connection=t)
        User.byName("user3", connection=t)
        User.select(connection=t).count()
    finally:
        ScopeTransaction.queryOne = original
        t.rollback()
    assert seen and all(classify_sql(s) == (READ, ("users",)) for s in seen), seen


# -- never stale -------------------------------------------------------------------------


def test_a_committed_write_makes_every_entry_of_its_table_stale(scope, backend, spec):
    readers, writers = make_cache(spec), make_cache(spec)
    assert fullname(readers, scope, backend) == "Full 1"
    rename(writers, scope, backend, "new")
    assert fullname(readers, scope, backend) == "new"


def test_a_reader_whose_snapshot_predates_a_commit_stores_nothing_later_readers_trust(scope, backend, spec):
    cache = make_cache(spec)
    queried, go = threading.Event(), threading.Event()

    class Paused(cache.transaction_class):
        def _cached(self, state, kind, key, tables, sql, run):
            def paused(statement):
                row = run(statement)
                queried.set()  # the old row is read; now let a writer commit before it is stored
                assert go.wait(10)
                return row
            return super()._cached(state, kind, key, tables, sql, paused)

    seen = []
    reader = threading.Thread(target=lambda: seen.append(
        fullname_with(Paused(scope.connection, begin_for(backend)))))
    reader.start()
    assert queried.wait(10)
    rename(cache, scope, backend, "new")
    go.set()
    reader.join(10)
    assert seen == ["Full 1"]
    assert fullname(cache, scope, backend) == "new"


def fullname_with(t) -> str:
    try:
        return User.get(1, connection=t).fullname
    finally:
        t.commit(close=True)


def _die_after_commit(uri, spec, begin, pre_committed, go, committed):
    """A writer that renames user 1 and is killed between its COMMIT and its second replacement."""
    from webpy_txscope._uri import open_connection

    cache = SharedCache(spec, lease=LEASE)
    store = cache.store
    begin_write, end_write = store.begin_write, store.end_write

    def paused_begin(tables, writer):
        begin_write(tables, writer)
        pre_committed.set()
        go.wait(10)

    def never_end(tables, writer):
        committed.set()
        threading.Event().wait(60)  # the parent kills this process here
        end_write(tables, writer)

    store.begin_write, store.end_write = paused_begin, never_end
    t = cache.transaction_class(open_connection(uri), begin)
    User.get(1, connection=t).fullname = "new"
    t.commit(close=True)


def test_a_writer_killed_between_commit_and_invalidation_leaves_nothing_trustable(scope, backend, spec):
    cache = make_cache(spec)
    assert fullname(cache, scope, backend) == "Full 1"  # an entry made before the write
    ctx = multiprocessing.get_context("fork")
    pre_committed, go, committed = ctx.Event(), ctx.Event(), ctx.Event()
    writer = ctx.Process(target=_die_after_commit,
                         args=(backend.uri, spec, begin_for(backend), pre_committed, go, committed))
    writer.start()
    try:
        assert pre_committed.wait(20)
        # Between the writer's first replacement and its COMMIT: the old row, which must not be stored.
        assert fullname(cache, scope, backend) == "Full 1"
        go.set()
        assert committed.wait(20)
        os.kill(writer.pid, signal.SIGKILL)
    finally:
        writer.join(20)
    assert writer.exitcode == -signal.SIGKILL
    assert backend.fullname(1) == "new"
    assert fullname(cache, scope, backend) == "new"
    assert fullname(cache, scope, backend) == "new"


# -- never uncommitted, never rolled back ------------------------------------------------------


def test_a_transaction_reads_its_own_writes_and_others_do_not_see_them_before_commit(scope, backend, tmp_path):
    cache = make_cache(f"local:{tmp_path / 'tokens'}")
    assert fullname(cache, scope, backend) == "Full 1"
    writer = tx(cache, scope, backend)
    try:
        User.get(1, connection=writer).fullname = "uncommitted"
        writer.cache.clear()  # so that the next read asks the database, not the transaction's own instance
        assert User.get(1, connection=writer).fullname == "uncommitted"
        if backend.kind != "sqlite":  # SQLite's writer holds the lock: another connection would wait
            assert fullname(cache, scope, backend) == "Full 1"
    finally:
        writer.rollback()
    assert fullname(cache, scope, backend) == "Full 1"
    assert backend.fullname(1) == "Full 1"


def test_a_rolled_back_write_leaves_no_entry(scope, backend, tmp_path, counts):
    cache = make_cache(f"local:{tmp_path / 'tokens'}")
    t = tx(cache, scope, backend)
    try:
        User.get(1, connection=t).fullname = "rolled back"
        before = counts()
        t.cache.clear()
        assert User.get(1, connection=t).fullname == "rolled back"
    finally:
        t.rollback()
    assert counts()["cache_bypasses"] == before["cache_bypasses"] + 1, "a read of a written table used the cache"
    assert fullname(cache, scope, backend) == "Full 1"


def test_a_failed_commit_leaves_no_entry_and_no_lease(scope, backend, spec, make_commit_fail):
    cache = make_cache(spec)
    t = tx(cache, scope, backend)
    User.get(1, connection=t).fullname = "never"
    sqlhub.threadingLocal.connection = t  # where make_commit_fail looks for the transaction
    try:
        make_commit_fail()
        with pytest.raises(Exception):
            t.commit(close=True)
        t.rollback()
    finally:
        sqlhub.threadingLocal.__dict__.pop("connection", None)
    assert cache.store.read(("users",))[1] is False, "the failed writer's lease was left behind"
    assert fullname(cache, scope, backend) == "Full 1"


@pytest.mark.parametrize("level", ["REPEATABLE READ", "SERIALIZABLE"])
def test_a_snapshot_isolation_scope_never_stores_what_its_old_snapshot_read(
        server_scope, server_backend, tmp_path, level):
    scope, backend = server_scope, server_backend
    cache = make_cache(f"local:{tmp_path / 'tokens'}")
    old = tx(cache, scope, backend, begin=(f"SET TRANSACTION ISOLATION LEVEL {level}",))
    # The snapshot is taken by a statement that reads no token of the users table; the
    # tokens read later for it are newer than the snapshot.
    old.queryAll("SELECT 1")
    backend.sql("UPDATE users SET fullname = 'new' WHERE id = 2")
    cache.invalidate("users")
    User.get(2, connection=old)  # tokens read now, rows from the old snapshot (PostgreSQL, MariaDB's REPEATABLE READ)
    old.commit(close=True)
    assert fullname(cache, scope, backend, 2) == "new"


def test_without_a_chosen_isolation_the_servers_default_decides(scope, backend, tmp_path, counts):
    # PostgreSQL's default is READ COMMITTED (asked once), SQLite reads outside a transaction:
    # cached.  MariaDB's default is REPEATABLE READ: bypassed.
    cache = make_cache(f"local:{tmp_path / 'tokens'}")
    for _ in range(2):
        t = cache.transaction_class(scope.connection)  # no isolation chosen
        assert User.get(1, connection=t).fullname == "Full 1"
        t.commit(close=True)
    assert counts()["cache_hits"] == (0 if backend.kind == "mysql" else 1)


# -- faults -----------------------------------------------------------------------------------


def test_entries_made_before_redis_was_flushed_are_never_served(scope, backend, redis_db, counts):
    cache = make_cache(REDIS_URL)
    assert fullname(cache, scope, backend) == "Full 1"
    backend.sql("UPDATE users SET fullname = 'outside' WHERE id = 1")
    redis_db.flushdb()  # a restart of a Redis that keeps nothing on disk
    assert fullname(cache, scope, backend) == "outside"


def test_after_a_flush_nothing_is_stored_for_a_lease_so_a_writer_caught_in_it_is_safe(scope, backend, redis_db):
    cache = make_cache(REDIS_URL)
    ctx = multiprocessing.get_context("fork")
    pre_committed, go, committed = ctx.Event(), ctx.Event(), ctx.Event()
    writer = ctx.Process(target=_die_after_commit,
                         args=(backend.uri, REDIS_URL, begin_for(backend), pre_committed, go, committed))
    writer.start()
    try:
        assert pre_committed.wait(20)
        redis_db.flushdb()  # the writer's lease and tokens are gone
        assert fullname(cache, scope, backend) == "Full 1"  # must not be stored: the writer may still commit
        go.set()
        assert committed.wait(20)
        os.kill(writer.pid, signal.SIGKILL)
    finally:
        writer.join(20)
    assert fullname(cache, scope, backend) == "new"


@pytest.fixture
def redis_proxy(redis_db):
    proxy = TcpProxy(6379)
    proxy.open()
    yield proxy
    proxy.close()


def test_an_unreachable_store_sends_reads_to_the_database_and_refuses_writes(scope, backend, redis_proxy, counts):
    url = f"redis://127.0.0.1:{redis_proxy.port}/11"
    cache = make_cache(url)
    assert fullname(cache, scope, backend) == "Full 1"
    redis_proxy.close()
    backend.sql("UPDATE users SET fullname = 'outside' WHERE id = 1")
    assert fullname(cache, scope, backend) == "outside"  # no entry is served when tokens cannot be read
    t = tx(cache, scope, backend)
    User.get(2, connection=t).fullname = "refused"
    with pytest.raises(CacheUnavailable, match="rolled back"):
        t.commit(close=True)
    t.rollback()
    assert backend.fullname(2) == "Full 2"
    assert counts()["cache_hits"] == 0


def test_a_store_lost_after_commit_is_reported_and_leaves_the_old_entries_stale(scope, backend, redis_proxy):
    url = f"redis://127.0.0.1:{redis_proxy.port}/11"
    cache = make_cache(url)
    others = make_cache(REDIS_URL)  # another process, whose Redis stays reachable
    assert fullname(others, scope, backend) == "Full 1"
    store = cache.store
    begin_write = store.begin_write

    def then_lose_the_store(tables, writer):
        begin_write(tables, writer)
        redis_proxy.close()

    store.begin_write = then_lose_the_store
    t = tx(cache, scope, backend)
    User.get(1, connection=t).fullname = "new"
    with pytest.raises(InvalidationFailed, match="was committed"):
        t.commit(close=True)
    assert backend.fullname(1) == "new"
    assert fullname(others, scope, backend) == "new"
    assert others.store.read(("users#1",))[1] is True, "the lease must hold until it runs out"


def test_a_replaced_local_file_is_reopened_by_every_process(scope, backend, tmp_path):
    path = tmp_path / "tokens"
    cache = make_cache(f"local:{path}")
    assert fullname(cache, scope, backend) == "Full 1"
    os.unlink(path)
    backend.sql("UPDATE users SET fullname = 'outside' WHERE id = 1")
    assert fullname(cache, scope, backend) == "outside"


# -- writes from outside the package -----------------------------------------------------------


@pytest.mark.parametrize("invalidate", [True, False], ids=["invalidated", "not-invalidated"])
def test_a_write_from_outside_is_seen_after_invalidate(scope, backend, spec, invalidate):
    cache = make_cache(spec)
    assert fullname(cache, scope, backend) == "Full 1"
    backend.sql("UPDATE users SET fullname = 'outside' WHERE id = 1")
    if invalidate:
        sharedcache.invalidate("users", cache=spec)
        assert fullname(cache, scope, backend) == "outside"
    else:  # proof that the test can see a stale entry
        assert fullname(cache, scope, backend) == "Full 1"


# -- bounded, observable, opt-outs ---------------------------------------------------------------


def test_entries_per_process_stay_within_max_entries(scope, backend, tmp_path):
    cache = make_cache(f"local:{tmp_path / 'tokens'}", max_entries=50)
    t = tx(cache, scope, backend)
    for user_id in range(1, 400):
        User.select(User.q.id == user_id, connection=t).count()
    t.commit(close=True)
    assert len(cache) == 50


def test_a_model_that_opts_out_is_never_cached(scope, backend, tmp_path, counts):
    cache = make_cache(f"local:{tmp_path / 'tokens'}", exclude=[User])
    fullname(cache, scope, backend)
    fullname(cache, scope, backend)
    assert counts()["cache_hits"] == 0 and counts()["cache_bypasses"] == 2


def test_the_local_store_shares_a_slot_between_more_writers_than_it_has_cells(tmp_path):
    store = settled(SharedCache(f"local:{tmp_path / 'tokens'}", lease=LEASE)).store
    writers = range(1, LocalStore.CELLS + 3)
    for writer in writers:
        store.begin_write(("users",), writer)
    for writer in writers[:-1]:
        store.end_write(("users",), writer)
        assert store.read(("users",))[1] is True
    store.end_write(("users",), writers[-1])  # the last one took over the shared cell
    assert store.read(("users",))[1] is False


def test_redis_store_errors_name_the_store_without_its_password():
    store = RedisStore("redis://:secret@127.0.0.1:1/11")
    with pytest.raises(StoreUnavailable) as info:
        store.read(("users",))
    assert "secret" not in str(info.value) and "127.0.0.1:1" in str(info.value)


def test_rows_holding_values_a_caller_could_change_in_place_are_not_cached():
    # psycopg returns lists for arrays and dicts for JSON: an entry shared between requests must not hold one.
    assert sharedcache._frozen([(1, [2, 3])]) is None
    assert sharedcache._frozen([(1, {"a": 1})]) is None
    assert sharedcache._frozen([[1, "a", None], None]) == ((1, "a", None), None)


def test_an_update_by_id_keeps_the_other_rows_entries_and_makes_selects_stale(scope, backend, spec, counts):
    cache = make_cache(spec)
    t = tx(cache, scope, backend)
    assert sorted(u.fullname for u in User.select(connection=t)) == ["Full 1", "Full 2", "Full 3"]
    t.commit(close=True)
    assert fullname(cache, scope, backend, 2) == "Full 2"  # its own transaction: the select's instances are not asked
    rename(cache, scope, backend, "new", user_id=1)
    before = counts()["cache_hits"]
    assert fullname(cache, scope, backend, 2) == "Full 2"
    assert counts()["cache_hits"] == before + 1, "an update of row 1 made row 2's entry stale"
    t = tx(cache, scope, backend)
    assert sorted(u.fullname for u in User.select(connection=t)) == ["Full 2", "Full 3", "new"]
    t.commit(close=True)
    assert fullname(cache, scope, backend, 1) == "new"


def test_an_insert_makes_a_cached_missing_row_and_the_counts_stale(scope, backend, spec):
    cache = make_cache(spec)
    with in_tx(cache, scope, backend) as t:
        assert User.select(connection=t).count() == 3
        for missing in range(4, 41):  # the id the database will choose is among them (MariaDB never reuses one)
            with pytest.raises(SQLObjectNotFound):
                User.get(missing, connection=t)
    with in_tx(cache, scope, backend) as t:
        new = User(name="user4", fullname="Full 4", password="x", connection=t).id
    assert 4 <= new < 41
    with in_tx(cache, scope, backend) as t:
        assert User.select(connection=t).count() == 4
        assert User.get(new, connection=t).fullname == "Full 4"


@contextlib.contextmanager
def in_tx(cache, scope, backend):
    """A cached transaction that commits if the block succeeds and rolls back if it fails."""
    t = tx(cache, scope, backend)
    try:
        yield t
    except BaseException:
        t.rollback()
        raise
    t.commit(close=True)


def test_a_delete_by_id_makes_its_row_and_the_selects_stale(scope, backend, spec):
    cache = make_cache(spec)
    assert fullname(cache, scope, backend, 3) == "Full 3"
    t = tx(cache, scope, backend)
    assert User.select(connection=t).count() == 3
    t.commit(close=True)
    t = tx(cache, scope, backend)
    User.get(3, connection=t).destroySelf()
    t.commit(close=True)
    t = tx(cache, scope, backend)
    assert User.select(connection=t).count() == 2
    with pytest.raises(Exception, match="3"):
        User.get(3, connection=t)
    t.commit(close=True)


def test_redis_keeps_no_key_forever(scope, backend, redis_db):
    # One token per row read by id: over 20,000 distinct rows they must expire (a lost token only
    # makes its entries stale), and leases expire with their lease.
    cache = make_cache(REDIS_URL)
    fullname(cache, scope, backend)
    rename(cache, scope, backend, "new")
    keys = [key for key in redis_db.keys("txscope:*") if key != b"txscope:epoch"]
    assert keys and all(redis_db.ttl(key) > 0 for key in keys), {k: redis_db.ttl(k) for k in keys}


def test_one_shared_cache_serves_one_database_and_says_so_without_a_password(tmp_path):
    # Entries are keyed by SQL text: two databases sharing one would answer each other's reads.
    from webpy_txscope import ConfigurationError, txscope

    cache = SharedCache(f"local:{tmp_path / 'tokens'}")
    first = txscope(f"sqlite:{tmp_path / 'a.db'}", cache=cache)
    again = txscope(f"sqlite:{tmp_path / 'a.db'}", cache=cache)
    assert first.manager.cache is again.manager.cache is cache  # the same database: one cache is right
    with pytest.raises(ConfigurationError) as info:
        txscope(f"sqlite:{tmp_path / 'b.db'}", cache=cache)
    assert "a.db" in str(info.value) and "b.db" in str(info.value) and "own SharedCache" in str(info.value)
    with pytest.raises(ConfigurationError) as info:
        txscope("postgres://app:hunter2@127.0.0.1/other_db", cache=cache)
    assert "other_db" in str(info.value) and "hunter2" not in str(info.value)


# -- what the database writes by itself ----------------------------------------------------------


class RefParent(SQLObject):
    class sqlmeta:
        table = "ref_parents"

    name = StringCol(length=20)


class RefChild(SQLObject):
    """Foreign keys SQLObject leaves to the database (cascade=None): its ON DELETE actions are the schema's."""

    class sqlmeta:
        table = "ref_children"

    name = StringCol(length=20)
    parent = ForeignKey("RefParent", cascade=None)
    up = ForeignKey("RefChild", default=None, cascade=None)


REF_SCHEMA = (
    "CREATE TABLE ref_parents (id INTEGER PRIMARY KEY, name VARCHAR(20))",
    "CREATE TABLE ref_children (id INTEGER PRIMARY KEY, name VARCHAR(20), parent_id INTEGER, up_id INTEGER, "
    "FOREIGN KEY (parent_id) REFERENCES ref_parents (id) ON DELETE CASCADE, "
    "FOREIGN KEY (up_id) REFERENCES ref_children (id) ON DELETE SET NULL)",
)


def test_rows_the_database_deletes_or_changes_by_itself_after_a_delete_are_never_served(scope, backend, tmp_path):
    """ON DELETE CASCADE into another table and ON DELETE SET NULL inside one: no statement names them."""
    backend.sql("DROP TABLE IF EXISTS ref_children")
    backend.sql("DROP TABLE IF EXISTS ref_parents")
    for statement in REF_SCHEMA:
        backend.sql(statement + (" ENGINE=InnoDB" if backend.kind == "mysql" else ""))
    backend.sql("INSERT INTO ref_parents (id, name) VALUES (1, 'one'), (2, 'two')")
    backend.sql("INSERT INTO ref_children (id, name, parent_id, up_id) VALUES "
                "(10, 'ten', 1, NULL), (20, 'twenty', 2, 10), (30, 'thirty', 2, NULL), (40, 'forty', 2, 30)")
    if backend.kind == "sqlite":  # SQLite acts on foreign keys only when asked, per connection
        scope.connection.query("PRAGMA foreign_keys = ON")
    cache = make_cache(f"local:{tmp_path / 'tokens'}")

    def seen():
        t = tx(cache, scope, backend)
        try:
            rows = {}
            for child_id in (10, 20, 40):
                try:
                    child = RefChild.get(child_id, connection=t)
                    rows[child_id] = child.upID
                except SQLObjectNotFound:
                    rows[child_id] = "gone"
            rows["count"] = RefChild.select(connection=t).count()
            return rows
        finally:
            t.commit(close=True)

    def children():  # what the database holds, read from outside
        return [tuple(row) for row in backend.sql("SELECT id, up_id FROM ref_children ORDER BY id")]

    def delete(cls, row_id):
        t = tx(cache, scope, backend)
        cls.get(row_id, connection=t).destroySelf()
        t.commit(close=True)

    assert seen() == seen() == {10: None, 20: 10, 40: 30, "count": 4}  # the second one served from entries
    delete(RefParent, 1)  # the database deletes child 10 and sets child 20's up_id to NULL
    assert children() == [(20, None), (30, None), (40, 30)]
    assert seen() == {10: "gone", 20: None, 40: 30, "count": 3}
    delete(RefChild, 30)  # one row by its id; the database sets child 40's up_id to NULL
    assert children() == [(20, None), (40, None)]
    assert seen() == {10: "gone", 20: None, 40: None, "count": 2}
