"""The shared cache stays bounded: 100,000 scopes touching 20,000 distinct rows.

Everything the cache keeps per process (entries with their rows and copied
instance values, the per-statement and per-table memos, the local store's
slot offsets) has a bound; in Redis every key it writes expires.  The scopes
run through ``ScopeManager.transaction()`` on SQLite, so that 100,000 of them
fit in a few seconds; what they keep does not depend on the database.
"""

from __future__ import annotations

import gc
import random

import redis
from sqlobject import IntCol, SQLObject, StringCol

from webpy_txscope import ScopeManager, SharedCache, _sqltables, sharedcache

ROWS = 20_000
SCOPES = 100_000
HOT = 1_000  # 90% of the reads by id go to these rows, as on a site: the rest go anywhere
MAX_ENTRIES = 2_000
REDIS_URL = "redis://127.0.0.1:6379/12"  # these tests flush it, and only it


class Part(SQLObject):
    class sqlmeta:
        table = "txs_parts"

    name = StringCol(length=40)
    stock = IntCol()


def make_parts(uri):
    manager = ScopeManager(uri)
    conn = manager.connection
    Part.dropTable(ifExists=True, connection=conn)
    Part.createTable(connection=conn)
    raw = conn.getConnection()
    raw.executemany("INSERT INTO txs_parts (id, name, stock) VALUES (?, ?, ?)",
                    [(i, f"part{i}", i % 97) for i in range(1, ROWS + 1)])
    raw.commit()
    conn.releaseConnection(raw)


def one_scope(manager, rng):
    """A request's reads: mostly a row by id, sometimes a page of rows or a count."""
    with manager.transaction():
        pick = rng.random()
        row_id = rng.randint(1, HOT if pick < 0.81 else ROWS)
        if pick < 0.9:
            assert Part.get(row_id).name == f"part{row_id}"
        elif pick < 0.99:
            start = row_id - row_id % 10
            assert len(list(Part.select(Part.q.id > start, orderBy="id")[:10])) <= 10
        else:
            assert Part.select(Part.q.stock == row_id % 97).count() > 0


def retained() -> int:
    """How many objects the garbage collector tracks: what a leak of instances, dicts or lists adds to."""
    gc.collect()
    return len(gc.get_objects())


def test_a_hundred_thousand_scopes_over_twenty_thousand_rows_stay_bounded(tmp_path):
    uri = "sqlite:" + str(tmp_path / "parts.db")
    make_parts(uri)
    cache = SharedCache(f"local:{tmp_path / 'tokens'}", max_entries=MAX_ENTRIES, lease=0.01)
    manager = ScopeManager(uri, cache=cache)
    rng = random.Random(7)
    for _ in range(SCOPES // 5):
        one_scope(manager, rng)
    after_fifth = retained()
    for _ in range(SCOPES - SCOPES // 5):
        one_scope(manager, rng)
    at_end = retained()
    assert len(cache) <= MAX_ENTRIES
    assert sum(1 for entry in cache._entries.values() if entry.values) > HOT // 2, \
        "entries kept no instance values: the copies were not exercised"
    assert len(_sqltables._memo) <= 4096
    assert len(cache.store._offsets) <= 100_000
    assert len(sharedcache._select_memo) < 10
    # 80,000 more scopes over a working set that was already full: what is kept does not grow with them.
    assert at_end < after_fifth + 1_000, (after_fifth, at_end)


def test_every_key_written_to_redis_expires(tmp_path):
    client = redis.Redis.from_url(REDIS_URL)
    client.flushdb()
    try:
        uri = "sqlite:" + str(tmp_path / "parts.db")
        make_parts(uri)
        cache = SharedCache(REDIS_URL, max_entries=MAX_ENTRIES, lease=0.05)
        manager = ScopeManager(uri, cache=cache)
        rng = random.Random(8)
        for i in range(3_000):
            one_scope(manager, rng)
            if i % 100 == 0:
                with manager.transaction():
                    Part.get(rng.randint(1, ROWS)).stock += 1
        keys = client.keys("*")
        assert len(keys) > 1_000
        without_expiry = [k for k in keys if client.ttl(k) == -1]
        assert without_expiry == [b"txscope:epoch"]  # one key: the store's identity (see _cachestore)
    finally:
        client.flushdb()
        client.close()
