"""The shared cache against the stale process-wide cache and the uncached scope, in one run.

    python bench/sharedcache.py                 # SQLite and PostgreSQL, about 3 minutes
    python bench/sharedcache.py --quick         # a smoke run of the same steps
    python bench/sharedcache.py --backends sqlite,postgres,mysql
    python bench/sharedcache.py --http          # and over HTTP: about 3 more minutes per database
    python bench/sharedcache.py --instructions  # callgrind counts on SQLite only, about 2 minutes

Same application, requests and timing as ``bench/run.py`` (each request
through the WSGI callable in-process, strategies interleaved in rotating
order, the median over rounds of the time per request), for these strategies:

* ``unsafe``: SQLObject's process-wide cache, stale across processes (the reference);
* ``txscope``: a scope per request, no shared cache;
* ``local``: ``txscope(cache="local")``, warm: the entries are current;
* ``local-miss``: the same, but this process's entries are dropped before
  every request, so each read is a miss that reads the tokens, queries and stores;
* ``redis``: ``txscope(cache="redis://...")``, warm.

With ``--http``, the read page and the get by id (ids in turn) are also
served by mod_wsgi-express, 3 processes x 4 threads, one server per strategy
(``bare`` web.py without a database, ``unsafe``, ``txscope``, ``local`` and
``redis``; ``modwsgi_cache.wsgi``), loaded by ``wrk`` (see ``run.load``) in
rounds with the strategies in rotating order; the report gives the median
requests/s as milliseconds per request, and the daemons' cache counters over
the timed rounds.  That part needs the mod_wsgi venv of
``bash .ci/install-modwsgi.sh``.

The Redis is a ``redis-server`` of the run's own on a free port
(``apt-get install redis-server``), or ``--redis URL``.  Not a database of
the machine's shared Redis: tests flush theirs, and a flush during a run
starts a new warm-up lease and new tokens, so "warm" would be misses.
MariaDB scopes cache only with ``isolation="READ COMMITTED"``, which the
cached strategies then use.  Writes ``bench/sharedcache_results.md`` and
``.json`` (or ``--out DIR``).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
for path in (HERE, ROOT, os.path.join(ROOT, "tests")):
    if path not in sys.path:
        sys.path.insert(0, path)

import run as R  # noqa: E402
import strategies as S  # noqa: E402

from webpy_txscope import SharedCache, stats, txscope  # noqa: E402

WORKLOADS = ("read", "get", "write")
NAMES = ("unsafe", "txscope", "local", "local-miss", "redis")
LEASE = 1.0  # the stores' warm-up lease (and a writer's): short, so that the runs start warm soon
FULL = dict(rounds=21, batch_seconds=0.05, http_rounds=7, http_seconds=2.0, warm_seconds=2.0)
QUICK = dict(rounds=3, batch_seconds=0.01, http_rounds=1, http_seconds=1.0, warm_seconds=1.0)
HTTP_WSGI = os.path.join(HERE, "modwsgi_cache.wsgi")
HTTP_NAMES = ("bare", "unsafe", "txscope", "local", "redis")
HTTP_WORKLOADS = ("read", "get")
PROCESSES, THREADS, CONNECTIONS = 3, 4, 8
COUNTERS = ("cache_hits", "cache_misses", "cache_bypasses", "cache_invalidations")


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


def time_backend(backend, uri, opts, tmp, redis_url):
    S.create_table(uri)
    local = SharedCache(f"local:{os.path.join(tmp, 'tokens')}", lease=LEASE)
    local_miss = SharedCache(f"local:{os.path.join(tmp, 'tokens')}", lease=LEASE)
    redis_cache = SharedCache(redis_url, lease=LEASE)
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
    counters = {k: after[k] - before[k] for k in COUNTERS}
    return medians, counters


# -- over HTTP, under mod_wsgi -------------------------------------------------------------------


def http_backend(backend, uri, opts, data: Path, redis_url):
    """Requests/s per (workload, strategy) under mod_wsgi-express, and the cached daemons' counters.

    *data* is a folder www-data owns: the SQLite database and the "local"
    token file live there.
    """
    import modwsgi  # tests/modwsgi.py; the daemons, which import this module, have no tests/

    if backend == "sqlite":
        uri = f"sqlite:{data / 'http.db'}"
    S.create_table(uri)
    if backend == "sqlite":
        modwsgi.give_to_www_data(data / "http.db")
    caches = {"local": f"local:{data / f'{backend}.tokens'}", "redis": redis_url}
    for spec in caches.values():
        # Made here, so the warm-up lease of a new store is over before the daemons start;
        # the daemons only map the file, which must then be theirs.
        settle(SharedCache(spec, lease=LEASE))
    modwsgi.give_to_www_data(data / f"{backend}.tokens")
    paths = {"read": ["/items"], "get": [f"/items/{i}" for i in range(1, S.ROWS + 1)]}

    def hit(server, workload, seconds):
        return R.load(server.url, seconds, CONNECTIONS, paths=paths[workload])

    samples = {(w, n): [] for w in HTTP_WORKLOADS for n in HTTP_NAMES}
    with contextlib.ExitStack() as stack:
        servers = {}
        for name in HTTP_NAMES:
            R.progress(f"{backend}: http: starting mod_wsgi-express for {name}")
            env = {"BENCH_STRATEGY": name, "BENCH_URI": uri, "BENCH_CACHE": caches.get(name, ""),
                   "BENCH_LEASE": str(LEASE)}
            servers[name] = stack.enter_context(modwsgi.serve(
                HTTP_WSGI, python_path=[HERE], processes=PROCESSES, threads=THREADS, env=env))
        for server in servers.values():  # every daemon imports the app and fills its entries
            R.load(server.url, opts["warm_seconds"], CONNECTIONS, paths=paths["read"] + paths["get"])
        before = {name: worker_stats(servers[name]) for name in caches}
        for r in range(opts["http_rounds"]):
            order = HTTP_NAMES[r % len(HTTP_NAMES):] + HTTP_NAMES[:r % len(HTTP_NAMES)]
            for workload in HTTP_WORKLOADS:
                for name in order:
                    samples[workload, name].append(hit(servers[name], workload, opts["http_seconds"]))
            R.progress(f"{backend}: http: round {r + 1}/{opts['http_rounds']}")
        after = {name: worker_stats(servers[name]) for name in caches}
    counters = {}
    for name in caches:
        if set(after[name]) != set(before[name]):
            raise RuntimeError(f"{backend}/{name}: the daemon processes changed during the timed rounds "
                               f"({sorted(before[name])} then {sorted(after[name])})")
        counters[name] = {k: sum(after[name][pid][k] - before[name][pid][k] for pid in after[name])
                          for k in COUNTERS}
        hits, misses = counters[name]["cache_hits"], counters[name]["cache_misses"]
        if not hits or misses > 0.05 * (hits + misses):  # only a restarted daemon or a flushed store misses
            raise RuntimeError(f"{backend}/{name}: the timed rounds were not served warm from the cache: "
                               f"{counters[name]}")
    rps = {f"{w}/{n}": statistics.median(v) for (w, n), v in samples.items()}
    return {"rps": rps, "ms": {k: 1000 / v for k, v in rps.items()},
            "samples": {f"{w}/{n}": v for (w, n), v in samples.items()}, "counters": counters}


@contextlib.contextmanager
def private_redis():
    """Yield the URL of a redis-server of this run's own, on a free port, keeping nothing on disk."""
    import redis

    server = shutil.which("redis-server")
    if not server:
        raise SystemExit("the redis strategy needs redis-server (apt-get install redis-server), or --redis URL")
    with tempfile.TemporaryDirectory(prefix="txscope-bench-redis-") as folder:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        log = os.path.join(folder, "redis.log")
        process = subprocess.Popen([server, "--bind", "127.0.0.1", "--port", str(port), "--save", "",
                                    "--appendonly", "no", "--dir", folder, "--logfile", log])
        try:
            deadline = time.monotonic() + 10
            with redis.Redis(port=port, socket_timeout=2, socket_connect_timeout=2) as client:
                while True:
                    try:
                        client.ping()
                        break
                    except redis.RedisError as e:  # refused until it listens
                        if process.poll() is not None or time.monotonic() > deadline:
                            raise RuntimeError(f"redis-server on port {port} did not start ({e}):\n"
                                               + (open(log).read() if os.path.exists(log) else "")) from None
                        time.sleep(0.05)
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            process.terminate()
            process.wait(10)


def worker_stats(server, timeout=30.0):
    """``/stats`` of every daemon process of *server*, by pid: ask in parallel until each one answered."""
    import urllib.request

    def ask(_):
        with urllib.request.urlopen(server.url + "/stats", timeout=10) as response:
            return json.loads(response.read())

    seen = {}
    deadline = time.monotonic() + timeout
    with ThreadPoolExecutor(PROCESSES * THREADS) as pool:
        while len(seen) < PROCESSES:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{server.url}: /stats answered from {len(seen)} of {PROCESSES} processes")
            for answer in pool.map(ask, range(PROCESSES * THREADS)):
                seen[answer["pid"]] = answer
    return seen


HTTP_RATIOS = (("local", "unsafe"), ("redis", "unsafe"), ("local", "txscope"))


def http_ratios(ms):
    """Ratios of milliseconds per request.

    For the read page also "above bare web.py": what every strategy pays for
    Apache, mod_wsgi, web.py and the template taken off first.  Not for the get
    by id, where the stale cache is about a tenth of a millisecond above bare: within the noise
    of the bare figure.
    """
    out = {}
    for workload, label in (("read", "read page"), ("get", "get by id")):
        for a, b in HTTP_RATIOS:
            out[f"{label}, {a} / {b}"] = ms[f"{workload}/{a}"] / ms[f"{workload}/{b}"]
        if workload == "read":
            bare = ms["read/bare"]
            for a, b in HTTP_RATIOS:
                out[f"{label}, {a} / {b}, above bare web.py"] = (ms[f"read/{a}"] - bare) / (ms[f"read/{b}"] - bare)
    return out


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
    valgrind = shutil.which("valgrind")
    if not valgrind:
        raise SystemExit("--instructions needs valgrind: apt-get install valgrind")
    env = dict(os.environ, PYTHONHASHSEED="0")

    def total(name, workload, n):
        # Each run has a database and a token file of its own: runs side by side share nothing.
        own = tempfile.mkdtemp(dir=tmp)
        S.create_table("sqlite:" + os.path.join(own, "bench.db"))
        done = subprocess.run([valgrind, "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable,
                               os.path.abspath(__file__), "--icount", name, workload, str(n), own],
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
    if results.get("http"):
        lines += [""] + http_markdown(results["http"], results["meta"]["http"])
    return "\n".join(lines) + "\n"


def http_markdown(http, meta):
    backends = list(http)
    lines = [f"## Over HTTP (mod_wsgi-express, {meta['processes']} processes x {meta['threads']} threads)", "",
             f"`{meta['client']}` with {meta['connections']} connections, {meta['rounds']} rounds of "
             f"{meta['seconds']:.0f} s per workload and strategy, strategies in rotating order; the get by id",
             f"walks ids 1-{S.ROWS}.  Milliseconds per request = 1000 / median requests/s of the whole server "
             "(its throughput, not one request's latency); `bare` is web.py without a database.", "",
             "| workload / strategy | " + " | ".join(f"{b} ms | {b} req/s" for b in backends) + " |",
             "|---|" + "---:|---:|" * len(backends)]
    for workload in HTTP_WORKLOADS:
        for name in HTTP_NAMES:
            key = f"{workload}/{name}"
            cells = [f"{http[b]['ms'][key]:.2f} | {http[b]['rps'][key]:.0f}" for b in backends]
            lines.append(f"| {key} | " + " | ".join(cells) + " |")
    lines += ["", "Ratios over HTTP (milliseconds per request; lower is faster):", "",
              "| ratio | " + " | ".join(backends) + " |", "|---|" + "---:|" * len(backends)]
    for label in http[backends[0]]["ratios"]:
        lines.append(f"| {label} | " + " | ".join(f"{http[b]['ratios'][label]:.2f}x" for b in backends) + " |")
    lines += ["", "Cache counters of the daemons over the timed rounds (all processes):", ""]
    for b in backends:
        for name, counters in http[b]["counters"].items():
            looked_up = counters["cache_hits"] + counters["cache_misses"]
            lines.append(f"- {b}, {name}: " + ", ".join(f"{k} {v}" for k, v in counters.items())
                         + f" (hits {counters['cache_hits'] / looked_up:.1%} of lookups)")
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--backends", default="sqlite,postgres")
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--redis", metavar="URL",
                        help="an existing Redis for the redis strategy (default: a redis-server of the run's own)")
    parser.add_argument("--http", action="store_true",
                        help="also serve the read page and the get by id under mod_wsgi-express and load them")
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
    backends = [b for b in args.backends.split(",") if b]
    for b in backends:
        if b not in R.BACKENDS:
            parser.error(f"unknown backend {b!r}: use sqlite, postgres or mysql")
    results = {"timing": {}, "ratios": {}, "counters": {}}
    with contextlib.ExitStack() as stack:
        tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="txscope-cache-bench-"))
        redis_url = args.redis or stack.enter_context(private_redis())
        data = None
        if args.http:
            import modwsgi

            data = stack.enter_context(modwsgi.www_data_dir())
        for backend in backends:
            uri = R.BACKENDS[backend] or "sqlite:" + os.path.join(tmp, "bench.db")
            R.ensure_database(uri)
            medians, counters = time_backend(backend, uri, opts, tmp, redis_url)
            results["timing"][backend] = medians
            results["ratios"][backend] = ratios(medians)
            results["counters"][backend] = counters
            if args.http:
                http = results.setdefault("http", {})[backend] = http_backend(backend, uri, opts, data, redis_url)
                http["ratios"] = http_ratios(http["ms"])
    command = "python bench/sharedcache.py" + (" --quick" if args.quick else "")
    if args.backends != parser.get_default("backends"):
        command += f" --backends {args.backends}"
    if args.http:
        command += " --http"
    results["meta"] = {
        "command": command,
        "date": time.strftime("%Y-%m-%d"),
        "machine": platform.platform(),
        "python": platform.python_version(),
        "rounds": opts["rounds"],
    }
    if args.http:
        results["meta"]["http"] = {
            "processes": PROCESSES, "threads": THREADS, "connections": CONNECTIONS,
            "client": "wrk" if shutil.which("wrk") else "Python http.client threads",
            "rounds": opts["http_rounds"], "seconds": opts["http_seconds"], "lease": LEASE,
        }
    with open(os.path.join(args.out, "sharedcache_results.json"), "w") as f:
        json.dump(results, f, indent=1, sort_keys=True)
    with open(os.path.join(args.out, "sharedcache_results.md"), "w") as f:
        f.write(markdown(results))
    sys.stdout.write(markdown(results))


if __name__ == "__main__":
    sys.exit(main())
