"""Writes from outside the package: what the triggers and the listener cost, and how long the window is.

    python bench/sharedcache_triggers.py            # about a minute
    python bench/sharedcache_triggers.py --quick    # a smoke run of the same steps

On a database of its own on the machine's PostgreSQL (``BENCH_POSTGRES_HOST``,
default 127.0.0.1; dropped at the end) and a Redis server of its own on a free
port, it measures:

* **the window**: from the moment an outside ``UPDATE`` (psycopg2, autocommit)
  returned from its COMMIT to the moment this process's listener had replaced
  the table's token, with "local" and Redis, in an idle process and in one
  whose 4 threads serve cached reads without pause (they hold the GIL);
* **a write request's added cost**: a cached scope's write (a ``Model.get``,
  an attribute set, COMMIT) with ``listen=True`` (one ``set_config`` more)
  against the same without, alternating, medians; and the ``set_config``
  statement alone;
* **an outside write's added cost**: a one-row ``UPDATE`` with the trigger
  against without it;
* **what marking saves**: the hit ratio of a read-mostly mix (95% reads of
  200 hot rows by id, 5% writes through the package) with the mark, and with
  the mark switched off (every package write then also announces its table).

Writes ``bench/sharedcache_triggers_results.md`` and ``.json`` (or ``--out DIR``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import psycopg2  # noqa: E402
from sqlobject import IntCol, SQLObject  # noqa: E402

from webpy_txscope import SharedCache, install_cache_triggers, remove_cache_triggers, stats, txscope  # noqa: E402
from webpy_txscope import _cachelisten  # noqa: E402

HOST = os.environ.get("BENCH_POSTGRES_HOST", "127.0.0.1")
DBNAME = "txscope_bench_triggers"
URI = f"postgres://postgres@{HOST}/{DBNAME}?driver=psycopg2"
ROWS = 200
FULL = dict(samples=300, batches=15, batch=40, mix=6000)
QUICK = dict(samples=20, batches=3, batch=10, mix=400)


class TrigItem(SQLObject):
    class sqlmeta:
        table = "bench_trig"

    version = IntCol()


def outside():
    conn = psycopg2.connect(host=HOST, user="postgres", dbname=DBNAME)
    conn.autocommit = True
    return conn


def create_database():
    admin = psycopg2.connect(host=HOST, user="postgres", dbname="postgres")
    admin.autocommit = True
    admin.cursor().execute(f"DROP DATABASE IF EXISTS {DBNAME} WITH (FORCE)")
    admin.cursor().execute(f"CREATE DATABASE {DBNAME}")
    admin.close()
    conn = outside()
    conn.cursor().execute("CREATE TABLE bench_trig (id SERIAL PRIMARY KEY, version INT NOT NULL)")
    conn.cursor().execute(f"INSERT INTO bench_trig (version) SELECT 0 FROM generate_series(1, {ROWS})")
    conn.close()


def drop_database():
    admin = psycopg2.connect(host=HOST, user="postgres", dbname="postgres")
    admin.autocommit = True
    admin.cursor().execute(f"DROP DATABASE IF EXISTS {DBNAME} WITH (FORCE)")
    admin.close()


class PrivateRedis:
    """A redis-server of this run's own, on a free port, keeping nothing on disk."""

    def __init__(self):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.dir = tempfile.mkdtemp(prefix="txscope-bench-redis-")
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", self.dir], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("redis-server did not start") from None
                time.sleep(0.02)
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def stop(self):
        self.process.terminate()
        self.process.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)


def settled(cache):
    """*cache* past its store's warm-up lease, its listener connected."""
    store = cache.store.store
    deadline = time.monotonic() + 30
    while store.read(("bench_trig",))[1]:
        if time.monotonic() > deadline:
            raise RuntimeError("the store still reports a pending write after 30 s")
        time.sleep(0.05)
    listener = cache.store.listener
    listener.start()
    while not listener.ready:
        if time.monotonic() > deadline:
            raise RuntimeError("the listener did not connect")
        time.sleep(0.01)
    return cache


class Recording:
    """The listener's store, noting when the table's token was replaced."""

    def __init__(self, store):
        self.store = store
        self.done = threading.Event()
        self.at = 0.0

    def __getattr__(self, name):
        return getattr(self.store, name)

    def end_write(self, tables, writer):
        self.store.end_write(tables, writer)
        if "bench_trig" in tables:
            self.at = time.monotonic()
            self.done.set()


def get(cache, connection, item_id):
    t = cache.transaction_class(connection)
    try:
        version = TrigItem.get(item_id, connection=t).version
    except BaseException:
        t.rollback()
        raise
    t.commit(close=True)
    return version


def write(cache, connection, item_id):
    t = cache.transaction_class(connection)
    item = TrigItem.get(item_id, connection=t)
    item.version = item.version + 1
    t.commit(close=True)


def window(cache, connection, samples, busy_threads):
    """Microseconds from an outside COMMIT's return to the listener's token replacement."""
    listener = cache.store.listener
    recording = listener.store = Recording(listener.store)
    stop = threading.Event()

    def serve_reads():
        rng = random.Random()
        while not stop.is_set():
            get(cache, connection, rng.randint(1, ROWS))

    workers = [threading.Thread(target=serve_reads, daemon=True) for _ in range(busy_threads)]
    for w in workers:
        w.start()
    conn = outside()
    cur = conn.cursor()
    out = []
    try:
        for i in range(samples):
            recording.done.clear()
            cur.execute("UPDATE bench_trig SET version = version + 1 WHERE id = %s", (1 + i % ROWS,))
            committed = time.monotonic()
            if not recording.done.wait(10):
                raise RuntimeError("no notification within 10 s")
            out.append((recording.at - committed) * 1e6)
    finally:
        stop.set()
        for w in workers:
            w.join()
        conn.close()
        listener.store = recording.store
    return out


def summary(values):
    values = sorted(values)
    return {"median": statistics.median(values), "p99": values[max(0, int(len(values) * 0.99) - 1)],
            "max": values[-1], "n": len(values)}


def write_cost(spec, connection, opts):
    """Median microseconds of a package write request, with and without listen=True, alternating."""
    plain = SharedCache(spec, lease=1.0)
    listening = SharedCache(spec, lease=1.0, listen=True)
    txscope(connection, cache=plain)
    txscope(connection, cache=listening)
    settled(listening)
    samples = {"listen": [], "no listen": []}
    rng = random.Random(7)
    for i in range(opts["batches"] * opts["batch"]):
        order = [("listen", listening), ("no listen", plain)]
        for name, cache in order if i % 2 else order[::-1]:
            start = time.perf_counter()
            write(cache, connection, rng.randint(1, ROWS))
            samples[name].append((time.perf_counter() - start) * 1e6)
    listening.store.listener.stop()
    return {name: statistics.median(v) for name, v in samples.items()}


def mark_cost(opts):
    """Median microseconds of the statement a listening scope sends before its first write of a table."""
    conn = outside()
    conn.autocommit = False
    cur = conn.cursor()
    cur.execute("SELECT 1")  # inside the transaction, as in a scope
    mark = _cachelisten.MARK.format("'bench_trig'")
    samples = []
    for _ in range(opts["batches"] * opts["batch"] * 5):
        start = time.perf_counter()
        cur.execute(mark)
        samples.append((time.perf_counter() - start) * 1e6)
    conn.rollback()
    conn.close()
    return statistics.median(samples)


def outside_write_cost(opts):
    """Median microseconds of a one-row UPDATE from outside, with and without the trigger."""
    conn = outside()
    cur = conn.cursor()
    samples = {"trigger": [], "no trigger": []}
    rng = random.Random(8)
    for b in range(opts["batches"]):
        for name in (["trigger", "no trigger"] if b % 2 else ["no trigger", "trigger"]):
            if name == "trigger":
                install_cache_triggers(URI, "bench_trig")
            else:
                remove_cache_triggers(URI, "bench_trig")
            start = time.perf_counter()
            for _ in range(opts["batch"] * 5):
                cur.execute("UPDATE bench_trig SET version = version + 1 WHERE id = %s", (rng.randint(1, ROWS),))
            samples[name].append((time.perf_counter() - start) / (opts["batch"] * 5) * 1e6)
    conn.close()
    install_cache_triggers(URI, "bench_trig")
    return {name: statistics.median(v) for name, v in samples.items()}


def hit_ratio(spec, connection, ops, mark):
    """The hit ratio of a read-mostly mix through a listening cache, with the mark on or off."""
    cache = settled(txscope(connection, cache=SharedCache(spec, lease=1.0, listen=True)).manager.cache)
    original = _cachelisten.MarkingTransaction._mark
    if not mark:
        def unmarked(self, tables):
            self._marked = self._marked.union(tables)  # never sent: the trigger announces every package write

        _cachelisten.MarkingTransaction._mark = unmarked
    rng = random.Random(9)
    before = stats()
    try:
        for _ in range(ops):
            item = rng.randint(1, ROWS)
            if rng.random() < 0.05:
                write(cache, connection, item)
            else:
                get(cache, connection, item)
    finally:
        _cachelisten.MarkingTransaction._mark = original
        cache.store.listener.stop()
    after = stats()
    hits = after["cache_hits"] - before["cache_hits"]
    misses = after["cache_misses"] - before["cache_misses"]
    return {"hit_ratio": hits / (hits + misses), "hits": hits, "misses": misses,
            "trigger_invalidations": after["cache_trigger_invalidations"] - before["cache_trigger_invalidations"]}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=HERE)
    args = parser.parse_args(argv)
    opts = QUICK if args.quick else FULL
    create_database()
    redis_server = PrivateRedis()
    tmp = tempfile.mkdtemp(prefix="txscope-bench-triggers-")
    results = {"machine": f"{platform.node()}, {os.cpu_count()} cores, Python {platform.python_version()}",
               "when": time.strftime("%Y-%m-%d %H:%M"), "options": opts}
    try:
        install_cache_triggers(URI, "bench_trig")
        specs = {"local": f"local:{os.path.join(tmp, 'tokens')}", "redis": redis_server.url}
        for name, spec in specs.items():
            connection = txscope(URI).connection
            cache = SharedCache(spec, lease=1.0, listen=True)
            txscope(connection, cache=cache)
            settled(cache)
            for busy in (0, 4):
                key = f"window, {name}, {busy} busy threads"
                results[key] = summary(window(cache, connection, opts["samples"], busy))
                print(key, {k: round(v) for k, v in results[key].items()}, flush=True)
            cache.store.listener.stop()
            results[f"write request, {name}"] = write_cost(spec, connection, opts)
            print(f"write request, {name}", results[f"write request, {name}"], flush=True)
            for mark in (True, False):
                key = f"mix, {name}, mark {'on' if mark else 'off'}"
                results[key] = hit_ratio(spec, connection, opts["mix"], mark)
                print(key, results[key], flush=True)
        results["mark statement"] = mark_cost(opts)
        print("mark statement", results["mark statement"], flush=True)
        results["outside write"] = outside_write_cost(opts)
        print("outside write", results["outside write"], flush=True)
    finally:
        redis_server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
        drop_database()
    with open(os.path.join(args.out, "sharedcache_triggers_results.json"), "w") as f:
        json.dump(results, f, indent=2)
    with open(os.path.join(args.out, "sharedcache_triggers_results.md"), "w") as f:
        f.write(markdown(results))


def markdown(results):
    lines = [f"# Writes from outside the package: triggers and listener ({results['when']})", "",
             f"{results['machine']}; `python bench/sharedcache_triggers.py`, options {results['options']}.", "",
             "## The window: outside COMMIT returned -> token replaced (µs)", "",
             "| Store, process | median | p99 | max | samples |", "|---|---|---|---|---|"]
    for key, value in results.items():
        if key.startswith("window"):
            lines.append(f"| {key[len('window, '):]} | {value['median']:.0f} | {value['p99']:.0f} | "
                         f"{value['max']:.0f} | {value['n']} |")
    lines += ["", "## Added costs (median µs per operation)", "", "| Operation | with | without | ratio |",
              "|---|---|---|---|"]
    for key, value in results.items():
        if key.startswith("write request"):
            lines.append(f"| {key} (listen=True) | {value['listen']:.0f} | {value['no listen']:.0f} | "
                         f"{value['listen'] / value['no listen']:.2f}x |")
    lines.append(f"| the mark (`{_cachelisten.MARK.format(chr(39) + 'bench_trig' + chr(39))}`) alone | "
                 f"{results['mark statement']:.0f} | | |")
    value = results["outside write"]
    lines.append(f"| outside one-row UPDATE (trigger) | {value['trigger']:.0f} | {value['no trigger']:.0f} | "
                 f"{value['trigger'] / value['no trigger']:.2f}x |")
    lines += ["", "## Read-mostly mix through a listening cache", "",
              "| Store, mark | hit ratio | hits | misses | tables invalidated by the listener |",
              "|---|---|---|---|---|"]
    for key, value in results.items():
        if key.startswith("mix"):
            lines.append(f"| {key[len('mix, '):]} | {value['hit_ratio']:.2f} | {value['hits']} | "
                         f"{value['misses']} | {value['trigger_invalidations']} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
