"""A read-mostly mix on the shared cache from several processes: hit ratio and stale reads.

    python bench/sharedcache_mix.py                         # PostgreSQL, cache="local"
    python bench/sharedcache_mix.py --cache redis://127.0.0.1:6379/13
    python bench/sharedcache_mix.py --no-invalidate         # proof that the checker sees stale reads

Each of ``--processes`` processes runs ``--ops`` units of work in scopes of
its own ``ScopeManager(uri, cache=...)``: 95% read one of 200 hot rows by id,
5% increment one (``SELECT ... FOR UPDATE``, then the update).  After a write
is acknowledged (its scope committed and invalidated), the writer raises the
row's acknowledged version in shared memory; a reader notes that version
*before* it starts, and a read that returns an older one is a stale read.
``--no-invalidate`` turns the writers' token replacements off.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import random
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
for path in (HERE, ROOT):
    if path not in sys.path:
        sys.path.insert(0, path)

from sqlobject import IntCol, SQLObject  # noqa: E402

import run as R  # noqa: E402
import strategies as S  # noqa: E402
from sharedcache import settle  # noqa: E402

from webpy_txscope import SharedCache, mask  # noqa: E402

ROWS = 200


class MixItem(SQLObject):
    class sqlmeta:
        table = "bench_mix"

    version = IntCol()


def create(uri):
    conn = S.private_connection(uri)
    MixItem.dropTable(ifExists=True, connection=conn)
    MixItem.createTable(connection=conn)
    for i in range(1, ROWS + 1):
        conn.query(f"INSERT INTO bench_mix (id, version) VALUES ({i}, 0)")
    conn.close()


def worker(uri, cache, ops, seed, acked, lock, out, invalidate):
    from webpy_txscope import ScopeManager, SharedCache, stats

    shared = SharedCache(cache, lease=2.0)
    if not invalidate:
        shared.store.begin_write = shared.store.end_write = lambda tables, writer: None
    manager = ScopeManager(S.private_connection(uri), cache=shared)
    rng = random.Random(seed)
    stale = reads = writes = 0
    before = stats()
    for _ in range(ops):
        row = rng.randint(1, ROWS)
        if rng.random() < 0.05:
            with manager.transaction() as scope:
                version = scope.tx.queryOne(f"SELECT version FROM bench_mix WHERE id = {row} FOR UPDATE")[0] + 1
                MixItem.get(row).version = version
            with lock:  # acknowledged: committed and invalidated
                acked[row] = max(acked[row], version)
            writes += 1
        else:
            floor = acked[row]
            with manager.transaction():
                seen = MixItem.get(row).version
            reads += 1
            stale += seen < floor
    after = stats()
    out.put({"reads": reads, "writes": writes, "stale": stale,
             **{k: after[k] - before[k] for k in ("cache_hits", "cache_misses", "cache_bypasses")}})


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--uri", default=R.BACKENDS["postgres"])
    parser.add_argument("--cache", default="local")
    parser.add_argument("--processes", type=int, default=3)
    parser.add_argument("--ops", type=int, default=3000)
    parser.add_argument("--no-invalidate", action="store_true")
    args = parser.parse_args(argv)
    R.ensure_database(args.uri)
    create(args.uri)
    ctx = multiprocessing.get_context("fork")
    acked, lock, out = ctx.Array("q", ROWS + 1, lock=False), ctx.Lock(), ctx.Queue()
    settle(SharedCache(args.cache, lease=2.0))  # a new store stores nothing for one lease
    started = time.monotonic()
    procs = [ctx.Process(target=worker, args=(args.uri, args.cache, args.ops, seed, acked, lock, out,
                                              not args.no_invalidate))
             for seed in range(args.processes)]
    for p in procs:
        p.start()
    results = [out.get(timeout=600) for _ in procs]
    for p in procs:
        p.join()
    total = {k: sum(r[k] for r in results) for k in results[0]}
    total["hit_ratio"] = round(total["cache_hits"] / max(1, total["reads"]), 3)
    total["seconds"] = round(time.monotonic() - started, 1)
    total["cache"] = mask(args.cache)
    total["invalidate"] = not args.no_invalidate
    sys.stdout.write(json.dumps(total) + "\n")


if __name__ == "__main__":
    sys.exit(main())
