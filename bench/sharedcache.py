"""The shared cache against the stale process-wide cache and the uncached scope, in one run.

    python bench/sharedcache.py                 # SQLite and PostgreSQL, about 3 minutes
    python bench/sharedcache.py --quick         # a smoke run of the same steps
    python bench/sharedcache.py --backends sqlite,postgres,mysql
    python bench/sharedcache.py --instructions  # callgrind counts on SQLite only, about 2 minutes

Same application, requests and timing as ``bench/run.py`` (each request
through the WSGI callable in-process, strategies interleaved in rotating
order, the median over rounds of the time per request), for these strategies:

* ``unsafe``: SQLObject's process-wide cache, stale across processes (the reference);
* ``txscope``: a scope per request, no shared cache;
* ``local``: ``txscope(cache="local")``, warm: the entries are current;
* ``local-miss``: the same, but this process's entries are dropped before
  every request, so each read is a miss that reads the tokens, queries and stores;
* ``redis``: ``txscope(cache="redis://127.0.0.1:6379/11")``, warm.

It needs the Redis of this machine kind (database 11, keys under ``txscope:``).
MariaDB scopes cache only with ``isolation="READ COMMITTED"``, which the
cached strategies then use.  Writes ``bench/sharedcache_results.md`` and
``.json`` (or ``--out DIR``).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
for path in (HERE, ROOT):
    if path not in sys.path:
        sys.path.insert(0, path)

import run as R  # noqa: E402
import strategies as S  # noqa: E402

from webpy_txscope import SharedCache, stats, txscope  # noqa: E402

REDIS_URL = "redis://127.0.0.1:6379/11"
WORKLOADS = ("read", "get", "write")
NAMES = ("unsafe", "txscope", "local", "local-miss", "redis")
FULL = dict(rounds=21, batch_seconds=0.05)
QUICK = dict(rounds=3, batch_seconds=0.01)


class Cached(S.Strategy):
    """The benchmark app under ``txscope(connection, cache=...)``."""

    def __init__(self, name, uri, cache, drop_entries=False):
        self.name = name
        self.uri = uri
        self.connection = S.private_connection(uri)
        options = {"isolation": "READ COMMITTED"} if uri.startswith("mysql") else {}
        app = S.make_webpy_app(S.Store(S.Item))
        app.add_processor(txscope(self.connection, cache=cache, **options))
        self.app = app
        wsgi = app.wsgifunc()
        if drop_entries:
            def every_read_misses(environ, start_response):
                cache.clear()
                return wsgi(environ, start_response)
            self.wsgi = every_read_misses
        else:
            self.wsgi = wsgi


def settle(cache):
    """Wait out the warm-up lease of a store this run made (no entry is stored during it)."""
    deadline = time.monotonic() + 30
    while cache.store.read(("bench_items",))[1]:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{cache!r} still reports a pending write after 30 s")
        time.sleep(0.05)


def time_backend(backend, uri, opts, tmp):
    S.create_table(uri)
    local = SharedCache(f"local:{os.path.join(tmp, 'tokens')}", lease=1.0)
    local_miss = SharedCache(f"local:{os.path.join(tmp, 'tokens')}", lease=1.0)
    redis_cache = SharedCache(REDIS_URL, lease=1.0)
    strategies = {
        "unsafe": S.Strategy("unsafe", uri),
        "txscope": S.Strategy("txscope", uri),
        "local": Cached("local", uri, local),
        "local-miss": Cached("local-miss", uri, local_miss, drop_entries=True),
        "redis": Cached("redis", uri, redis_cache),
    }
    for cache in (local, redis_cache):
        settle(cache)
    next_request = R.Requests()
    cells = [(w, s) for w in WORKLOADS for s in strategies]
    sizes = {}
    for workload, name in cells:  # warm up (fills the caches) and size the batches
        R.run_batch(strategies[name], workload, 3 * S.ROWS, next_request)
        per = min(R.run_batch(strategies[name], workload, 3, next_request) for _ in range(2))
        sizes[workload, name] = max(3, min(5000, int(opts["batch_seconds"] / per)))
    samples = {cell: [] for cell in cells}
    before = stats()
    names = list(strategies)
    for r in range(opts["rounds"]):
        order = names[r % len(names):] + names[:r % len(names)]
        # Reads and writes in separate phases: a write makes the next read of its table a miss.
        for workload in WORKLOADS:
            if workload != "write":
                for name in order:  # the writes of the last round made the entries stale
                    R.run_batch(strategies[name], workload, S.ROWS, next_request)
            for name in order:
                samples[workload, name].append(
                    R.run_batch(strategies[name], workload, sizes[workload, name], next_request))
        R.progress(f"{backend}: round {r + 1}/{opts['rounds']}")
    after = stats()
    for strategy in strategies.values():
        strategy.prepare()
        strategy.close()
    S.sqlhub.threadingLocal.__dict__.pop("connection", None)
    gc.collect()
    medians = {f"{w}/{s}": statistics.median(v) * 1e6 for (w, s), v in samples.items()}
    counters = {k: after[k] - before[k] for k in ("cache_hits", "cache_misses", "cache_bypasses",
                                                  "cache_invalidations")}
    return medians, counters


# -- instructions: what the noise of a shared machine does not blur --------------------------

ICOUNT = [(name, workload) for workload in ("read", "get") for name in ("unsafe", "txscope", "local", "local-miss")]


def icount_main(name, workload, n, tmp):
    """Run *n* warm requests of *workload* through *name* on SQLite in *tmp* (under callgrind)."""
    uri = "sqlite:" + os.path.join(tmp, "bench.db")
    if name in ("local", "local-miss"):
        cache = SharedCache(f"local:{os.path.join(tmp, 'tokens')}", lease=0.2)
        strategy = Cached(name, uri, cache, drop_entries=name == "local-miss")
        settle(cache)
    else:
        strategy = S.Strategy(name, uri)
    strategy.prepare()
    next_request = R.Requests()
    for _ in range(2 * S.ROWS):  # warm: imports, every entry and every instance state
        S.call(strategy.wsgi, *next_request(workload))
    for _ in range(n):
        S.call(strategy.wsgi, *next_request(workload))


def instructions(tmp):
    """Instructions per request of each ICOUNT pair: two run lengths, so that start-up cancels out."""
    import shutil
    import subprocess
    from concurrent.futures import ThreadPoolExecutor

    valgrind = shutil.which("valgrind")
    if not valgrind:
        raise SystemExit("--instructions needs valgrind: apt-get install valgrind")
    S.create_table("sqlite:" + os.path.join(tmp, "bench.db"))
    env = dict(os.environ, PYTHONHASHSEED="0")

    def total(name, workload, n):
        done = subprocess.run([valgrind, "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable,
                               os.path.abspath(__file__), "--icount", name, workload, str(n), tmp],
                              capture_output=True, text=True, env=env)
        for line in done.stderr.splitlines():
            if "Collected :" in line:
                return int(line.split()[-1])
        raise RuntimeError("callgrind gave no count:\n" + done.stderr[-2000:])

    def per_request(pair):
        return (total(*pair, 60) - total(*pair, 10)) / 50

    with ThreadPoolExecutor(os.cpu_count() or 2) as pool:
        counts = dict(zip(ICOUNT, pool.map(per_request, ICOUNT)))
    return {f"{w}/{n}": c for (n, w), c in counts.items()}


def ratios(medians):
    def r(a, b):
        return medians[a] / medians[b]

    return {
        "read page, warm local / unsafe": r("read/local", "read/unsafe"),
        "get by id, warm local / unsafe": r("get/local", "get/unsafe"),
        "read page, warm redis / unsafe": r("read/redis", "read/unsafe"),
        "get by id, warm redis / unsafe": r("get/redis", "get/unsafe"),
        "read page, miss / uncached scope": r("read/local-miss", "read/txscope"),
        "get by id, miss / uncached scope": r("get/local-miss", "get/txscope"),
        "write, local / uncached scope": r("write/local", "write/txscope"),
        "write, redis / uncached scope": r("write/redis", "write/txscope"),
    }


def markdown(results):
    lines = ["# The shared cache, measured", "",
             f"`{results['meta']['command']}` on {results['meta']['machine']}, Python "
             f"{results['meta']['python']}, {results['meta']['rounds']} rounds, {results['meta']['date']}.", "",
             "Median microseconds per request, in-process:", ""]
    backends = list(results["timing"])
    lines.append("| workload / strategy | " + " | ".join(backends) + " |")
    lines.append("|---|" + "---:|" * len(backends))
    for workload in WORKLOADS:
        for name in NAMES:
            key = f"{workload}/{name}"
            lines.append(f"| {key} | " + " | ".join(f"{results['timing'][b][key]:.0f}" for b in backends) + " |")
    lines += ["", "Ratios (lower is faster):", ""]
    lines.append("| ratio | " + " | ".join(backends) + " |")
    lines.append("|---|" + "---:|" * len(backends))
    for label in results["ratios"][backends[0]]:
        lines.append(f"| {label} | " + " | ".join(f"{results['ratios'][b][label]:.2f}x" for b in backends) + " |")
    lines += ["", "Cache counters over the timed rounds:", ""]
    for b in backends:
        lines.append(f"- {b}: " + ", ".join(f"{k} {v}" for k, v in results["counters"][b].items()))
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--backends", default="sqlite,postgres")
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--out", default=HERE)
    parser.add_argument("--instructions", action="store_true",
                        help="count instructions per request with callgrind (SQLite) instead of timing")
    parser.add_argument("--icount", nargs=4, metavar=("STRATEGY", "WORKLOAD", "N", "DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.icount:
        name, workload, n, tmp = args.icount
        return icount_main(name, workload, int(n), tmp)
    if args.instructions:
        with tempfile.TemporaryDirectory(prefix="txscope-cache-icount-") as tmp:
            counts = instructions(tmp)
        lines = ["| request | unsafe | txscope | local (warm) | local (miss) | warm / unsafe | miss / txscope |",
                 "|---|---:|---:|---:|---:|---:|---:|"]
        for w in ("read", "get"):
            u, t, c, m = (counts[f"{w}/{n}"] for n in ("unsafe", "txscope", "local", "local-miss"))
            lines.append(f"| {w} | {u:,.0f} | {t:,.0f} | {c:,.0f} | {m:,.0f} | {c / u:.2f}x | {m / t:.2f}x |")
        sys.stdout.write("Instructions per request (callgrind, SQLite):\n\n" + "\n".join(lines) + "\n")
        return 0
    opts = dict(QUICK if args.quick else FULL)
    if args.rounds:
        opts["rounds"] = args.rounds
    os.makedirs(args.out, exist_ok=True)
    results = {"timing": {}, "ratios": {}, "counters": {}}
    with tempfile.TemporaryDirectory(prefix="txscope-cache-bench-") as tmp:
        for backend in [b for b in args.backends.split(",") if b]:
            uri = R.BACKENDS[backend] or "sqlite:" + os.path.join(tmp, "bench.db")
            R.ensure_database(uri)
            medians, counters = time_backend(backend, uri, opts, tmp)
            results["timing"][backend] = medians
            results["ratios"][backend] = ratios(medians)
            results["counters"][backend] = counters
    results["meta"] = {
        "command": "python bench/sharedcache.py" + (" --quick" if args.quick else ""),
        "date": time.strftime("%Y-%m-%d"),
        "machine": platform.platform(),
        "python": platform.python_version(),
        "rounds": opts["rounds"],
    }
    with open(os.path.join(args.out, "sharedcache_results.json"), "w") as f:
        json.dump(results, f, indent=1, sort_keys=True)
    with open(os.path.join(args.out, "sharedcache_results.md"), "w") as f:
        f.write(markdown(results))
    sys.stdout.write(markdown(results))


if __name__ == "__main__":
    sys.exit(main())
