"""Benchmark every way of keeping SQLObject data fresh under web.py, in one run.

    python bench/run.py            # the full run, about 8 minutes on 2 cores
    python bench/run.py --quick    # a smoke run of the same steps, under a minute

It needs ``pip install -e '.[testing,bench]'``, the PostgreSQL and MariaDB
servers of this machine kind (see the README), ``wrk`` (``apt-get install -y
wrk``; a Python client is used without it) and, for the HTTP part, the
mod_wsgi venv of ``bash .ci/install-modwsgi.sh``.  It writes
``bench/results.md``, ``bench/results.json`` and ``bench/results.png`` (or
``--out DIR``) and shows its progress on stderr.

How it measures:

* **Per-request time, in-process.**  Each request goes through the strategy's
  WSGI callable with a hand-built environ; no sockets.  Every round runs a
  batch of each (workload, strategy) pair, the strategies in a rotating order,
  and the report gives the median over rounds of the time per request.
  Strategies are interleaved so that a noisy neighbour slows all of them alike.
* **Stale reads, two processes.**  This process and a worker process each
  build every strategy with connections of their own.  Per strategy and trial
  this process reads a row (by id and on the read page), the worker updates it
  through the same strategy, and this process reads it again: each answer
  without the new value is a stale read.
* **Throughput over HTTP.**  The read page served by mod_wsgi-express
  (3 processes x 4 threads, PostgreSQL) for the unsafe cache, the recipe and
  txscope, loaded by ``wrk`` in rotating rounds; the median requests/s.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from urllib.parse import urlsplit, urlunsplit

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
for path in (HERE, ROOT):
    if path not in sys.path:
        sys.path.insert(0, path)

import strategies as S  # noqa: E402

LABELS = {
    "bare": "bare web.py, no database",
    "unsafe": "unsafe process-wide cache (stale)",
    "nocache": "cacheValues = False",
    "recipe": "published load_sqlo recipe",
    "middleware": "SQLObjectMiddleware(use_transaction=True)",
    "txscope": "webpy_txscope",
}
WORKLOAD_LABELS = {
    "read": "read page (50 rows x 3 cols)",
    "get": "get by id",
    "write": "update, then 303",
    "nodb": "no database",
}
BACKENDS = {
    "sqlite": None,  # a file in a temporary folder
    "postgres": os.environ.get("BENCH_POSTGRES_URI", "postgres://postgres@127.0.0.1/txscope_bench"),
    "mysql": os.environ.get("BENCH_MYSQL_URI", "mysql://root@127.0.0.1/txscope_bench"),
}
HTTP_STRATEGIES = ("unsafe", "recipe", "txscope")

FULL = dict(rounds=31, batch_seconds=0.06, stale_trials=10, http_rounds=5, http_seconds=5.0, callgrind=True)
QUICK = dict(rounds=3, batch_seconds=0.01, stale_trials=2, http_rounds=1, http_seconds=1.0, callgrind=False)


def progress(message):
    sys.stderr.write("[bench %6.1fs] %s\n" % (time.monotonic() - START, message))
    sys.stderr.flush()


START = time.monotonic()


# -- databases ----------------------------------------------------------------------------


def ensure_database(uri):
    """Create the database of a server URI if it is missing (SQLite needs nothing)."""
    parts = urlsplit(uri)
    kind = parts.scheme
    if kind == "sqlite":
        return
    name = parts.path.lstrip("/")
    admin = urlunsplit(parts._replace(path="/" + ("postgres" if kind.startswith("postgres") else "mysql")))
    conn = S.private_connection(admin)
    try:
        if kind.startswith("postgres"):
            if not conn.queryOne("SELECT 1 FROM pg_database WHERE datname = %s" % conn.sqlrepr(name)):
                conn.query("CREATE DATABASE %s" % name)
        else:
            conn.query("CREATE DATABASE IF NOT EXISTS %s CHARACTER SET utf8mb4" % name)
    finally:
        conn.close()


# -- in-process timing ----------------------------------------------------------------------


class Requests:
    """The request a workload sends next (ids and written titles rotate)."""

    def __init__(self):
        self.counter = 0

    def __call__(self, workload):
        self.counter += 1
        item = self.counter % S.ROWS + 1
        if workload == "read":
            return "GET", "/items", b""
        if workload == "get":
            return "GET", "/items/%d" % item, b""
        if workload == "write":
            title = "Item number %d, a thing of some %s" % (item, "description" if self.counter % 2 else "Description")
            return "POST", "/items/%d" % item, ("title=" + title.replace(" ", "+")).encode()
        return "GET", "/ping", b""


EXPECTED_STATUS = {"read": "200 OK", "get": "200 OK", "write": "303 See Other", "nodb": "200 OK"}


def run_batch(strategy, workload, n, next_request):
    """Seconds per request for *n* requests of *workload* through *strategy*."""
    strategy.prepare()
    batch = [next_request(workload) for _ in range(n)]
    environ = S.environ
    wsgi = strategy.wsgi
    expected = EXPECTED_STATUS[workload]
    statuses = []
    start_response = lambda status, headers, exc_info=None: statuses.append(status)  # noqa: E731
    envs = [environ(*request) for request in batch]
    gc.collect()
    t0 = time.perf_counter()
    for env in envs:
        body = wsgi(env, start_response)
        for _ in body:
            pass
        close = getattr(body, "close", None)
        if close is not None:
            close()
    elapsed = time.perf_counter() - t0
    if any(status != expected for status in statuses):
        raise RuntimeError("%s/%s answered %s, expected %s" % (
            strategy.name, workload, sorted(set(statuses)), expected))
    return elapsed / n


def time_backend(backend, uri, opts, strategies_wanted):
    """Median seconds per request for each (workload, strategy) on one database."""
    S.create_table(uri)
    strategies = {name: S.Strategy(name, uri) for name in strategies_wanted}
    next_request = Requests()
    cells = [(w, s) for w in S.WORKLOADS for s in strategies]
    sizes = {}
    for workload, name in cells:  # warm up and size the batches
        run_batch(strategies[name], workload, 3, next_request)
        per = min(run_batch(strategies[name], workload, 3, next_request) for _ in range(2))
        sizes[workload, name] = max(3, min(5000, int(opts["batch_seconds"] / per)))
    samples = {cell: [] for cell in cells}
    rounds = opts["rounds"]
    names = list(strategies)
    t_start = time.monotonic()
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for workload in S.WORKLOADS:
            for name in order:
                samples[workload, name].append(run_batch(strategies[name], workload, sizes[workload, name],
                                                         next_request))
        done = r + 1
        eta = (time.monotonic() - t_start) / done * (rounds - done)
        progress("%s: round %d/%d (about %.0fs left for this database)" % (backend, done, rounds, eta))
    for strategy in strategies.values():
        strategy.prepare()
        strategy.close()
    S.sqlhub.threadingLocal.__dict__.pop("connection", None)
    return {
        "%s/%s" % cell: {
            "median_us": statistics.median(values) * 1e6,
            "min_us": min(values) * 1e6,
            "rounds": len(values),
            "batch": sizes[cell],
        }
        for cell, values in samples.items()
    }


# -- stale reads across two processes -----------------------------------------------------


def worker_main(uri):
    """The second process: run the requests it is sent through its own strategies."""
    strategies = {name: S.Strategy(name, uri) for name in S.STRATEGIES}
    for line in sys.stdin:
        name, method, url, body = json.loads(line)
        strategy = strategies[name]
        strategy.prepare()
        status, data = S.call(strategy.wsgi, method, url, body.encode())
        sys.stdout.write(json.dumps([status, data.decode()]) + "\n")
        sys.stdout.flush()


def stale_check(backend, uri, trials, strategies_wanted):
    """Stale answers per strategy, out of 2 reads per trial."""
    S.create_table(uri)
    worker = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--worker", uri],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        def remote(name, method, url, body=""):
            worker.stdin.write(json.dumps([name, method, url, body]) + "\n")
            worker.stdin.flush()
            line = worker.stdout.readline()
            if not line:
                raise RuntimeError("the stale-check worker died")
            return json.loads(line)

        local = {name: S.Strategy(name, uri) for name in strategies_wanted if name != "bare"}
        result = {}
        for name, strategy in local.items():
            stale = reads = 0
            for trial in range(trials):
                item = trial % S.ROWS + 1
                strategy.prepare()
                S.call(strategy.wsgi, "GET", "/items")  # load the rows into this process
                S.call(strategy.wsgi, "GET", "/items/%d" % item)
                new = "fresh-%s-%d-%d" % (name, trial, time.monotonic_ns() % 10 ** 9)
                status, _ = remote(name, "POST", "/items/%d" % item, "title=" + new)
                if status != "303 See Other":
                    raise RuntimeError("the worker's write through %s answered %s" % (name, status))
                strategy.prepare()
                for url in ("/items/%d" % item, "/items"):
                    status, data = S.call(strategy.wsgi, "GET", url)
                    reads += 1
                    stale += new.encode() not in data
            result[name] = {"stale": stale, "reads": reads}
            progress("%s: stale check %-10s %d stale of %d reads" % (backend, name, stale, reads))
        for strategy in local.values():
            strategy.prepare()
            strategy.close()
        S.sqlhub.threadingLocal.__dict__.pop("connection", None)
        return result
    finally:
        worker.stdin.close()
        worker.wait(30)


# -- throughput over HTTP under mod_wsgi -----------------------------------------------------


WSGI_FILE = os.path.join(HERE, "modwsgi_app.wsgi")


def http_throughput(uri, opts):
    """Requests per second for the read page, per strategy, under mod_wsgi-express."""
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    try:
        import modwsgi
    finally:
        sys.path.remove(os.path.join(ROOT, "tests"))
    import contextlib

    S.create_table(uri)
    samples = {name: [] for name in HTTP_STRATEGIES}
    with contextlib.ExitStack() as stack:
        servers = {}
        for name in HTTP_STRATEGIES:
            progress("http: starting mod_wsgi-express for %s" % name)
            servers[name] = stack.enter_context(modwsgi.serve(
                WSGI_FILE, python_path=[HERE], processes=3, threads=4,
                env={"BENCH_STRATEGY": name, "BENCH_URI": uri},
            ))
        for name, server in servers.items():  # warm every daemon process
            load(server.url + "/items", 0.5)
        for r in range(opts["http_rounds"]):
            order = HTTP_STRATEGIES[r % 3:] + HTTP_STRATEGIES[:r % 3]
            for name in order:
                rps = load(servers[name].url + "/items", opts["http_seconds"])
                samples[name].append(rps)
                progress("http: round %d/%d %-8s %.0f requests/s" % (r + 1, opts["http_rounds"], name, rps))
    return {name: {"median_rps": statistics.median(v), "samples": v} for name, v in samples.items()}


def load(url, seconds, connections=8, paths=None):
    """Requests per second answered with 200 in *seconds* of load on *url*.

    With *paths*, each client sends them in turn to *url*'s server instead.
    """
    wrk = shutil.which("wrk")
    if wrk:
        command = [wrk, "-t2", "-c%d" % connections, "-d%ds" % max(1, round(seconds)), url]
        with tempfile.TemporaryDirectory(prefix="txscope-wrk-") as tmp:
            if paths:
                # wrk runs this in each of its threads: each one walks the paths on its own.
                script = os.path.join(tmp, "paths.lua")
                with open(script, "w") as f:
                    f.write("local paths = {%s}\nlocal i = 0\nrequest = function()\n"
                            "  i = i %% #paths + 1\n  return wrk.format(nil, paths[i])\nend\n"
                            % ", ".join(json.dumps(p) for p in paths))
                command[1:1] = ["-s", script]
            out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
        if "Non-2xx" in out or "Socket errors" in out:
            raise RuntimeError("wrk saw errors:\n" + out)
        for line in out.splitlines():
            if line.startswith("Requests/sec:"):
                return float(line.split()[1])
        raise RuntimeError("no Requests/sec in wrk's output:\n" + out)
    return _python_load(url, seconds, connections, paths)


def _python_load(url, seconds, connections, paths=None):
    import http.client

    parts = urlsplit(url)
    paths = list(paths or [parts.path])
    deadline = time.monotonic() + seconds
    counts = [0] * connections
    errors = []

    def client(i):
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
        try:
            while time.monotonic() < deadline:
                conn.request("GET", paths[(i + counts[i]) % len(paths)])
                response = conn.getresponse()
                response.read()
                if response.status != 200:
                    errors.append(response.status)
                    return
                counts[i] += 1
        finally:
            conn.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(connections)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise RuntimeError("HTTP load saw status %s" % errors[0])
    return sum(counts) / (time.monotonic() - t0)


# -- instructions, which a noisy machine does not blur ------------------------------------


def icount_main(name, workload, n, uri):
    """Run *n* requests of *workload* through *name* (under callgrind, see instructions())."""
    strategy = S.Strategy(name, uri)
    strategy.prepare()
    next_request = Requests()
    for _ in range(50):  # warm up: imports, caches, the reused scope
        S.call(strategy.wsgi, *next_request(workload))
    for _ in range(n):
        S.call(strategy.wsgi, *next_request(workload))


def instructions(uri, pairs):
    """Instructions per request of each (strategy, workload), counted by valgrind's callgrind.

    Two runs of different lengths, so that start-up cancels out.
    """
    valgrind = shutil.which("valgrind")
    if not valgrind:
        return {}
    env = dict(os.environ, PYTHONHASHSEED="0")

    def total(name, workload, n):
        done = subprocess.run([valgrind, "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable,
                               os.path.abspath(__file__), "--icount", name, workload, str(n), uri],
                              capture_output=True, text=True, env=env)
        for line in done.stderr.splitlines():
            if "Collected :" in line:
                return int(line.split()[-1])
        raise RuntimeError("callgrind gave no count:\n" + done.stderr[-2000:])

    def per_request(pair):
        name, workload = pair
        short, long = (100, 500) if workload == "nodb" else (3, 15)
        return (total(name, workload, long) - total(name, workload, short)) / (long - short)

    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(os.cpu_count() or 2) as pool:
        counts = list(pool.map(per_request, pairs))
    out = {}
    for (name, workload), count in zip(pairs, counts):
        out["%s/%s" % (workload, name)] = count
        progress("callgrind: %-8s %-5s %.0f instructions per request" % (name, workload, count))
    return out


ICOUNT_PAIRS = [("bare", "nodb"), ("txscope", "nodb"), ("unsafe", "read"), ("txscope", "read"), ("recipe", "read")]


# -- the report -------------------------------------------------------------------------------


def targets(results):
    """Each of the issue's targets, with the measured ratio and whether it is met."""
    out = []
    timing = results["timing"]
    for backend, cells in timing.items():
        def t(workload, name):
            cell = cells.get("%s/%s" % (workload, name))
            return cell["median_us"] if cell else None

        tx = t("read", "txscope")
        if tx is None:
            continue
        checks = [("read page <= 0.85x the recipe", "recipe", 0.85),
                  ("read page <= 0.85x SQLObjectMiddleware", "middleware", 0.85)]
        if backend == "postgres":
            checks.append(("read page <= 0.10x cacheValues=False", "nocache", 0.10))
        for label, other, limit in checks:
            if t("read", other):
                ratio = tx / t("read", other)
                out.append(dict(backend=backend, target=label, measured="%.2fx" % ratio, met=ratio <= limit))
        if t("read", "unsafe"):
            ratio = tx / t("read", "unsafe")
            out.append(dict(backend=backend, target="read page <= 1.25x the unsafe stale cache",
                            measured="%.2fx" % ratio, met=ratio <= 1.25))
        if t("nodb", "bare") and t("nodb", "txscope"):
            extra = t("nodb", "txscope") - t("nodb", "bare")
            out.append(dict(backend=backend, target="no-database request <= 2 us above bare web.py",
                            measured="%+.1f us" % extra, met=extra <= 2.0))
    return out


def markdown(results):
    lines = ["# Benchmark results", ""]
    meta = results["meta"]
    lines += ["Produced by `%s` on %s (%s, Python %s, %d CPUs) in %.0f s; %d rounds per database."
              % (meta["command"], meta["date"], meta["machine"], meta["python"], meta["cpus"],
                 meta["seconds"], meta["rounds"]), ""]
    lines += ["Time per request in microseconds (median over rounds, in-process WSGI calls), and in",
              "brackets each strategy's time divided by webpy_txscope's (above 1: slower than txscope).",
              "Stale: answers that missed another process's committed update, in the two-process check.", ""]
    for backend, cells in results["timing"].items():
        lines += ["## %s" % backend, ""]
        head = "| strategy | " + " | ".join(WORKLOAD_LABELS[w] for w in S.WORKLOADS) + " | stale reads |"
        lines += [head, "|" + "---|" * (len(S.WORKLOADS) + 2)]
        stale = results.get("stale", {}).get(backend, {})
        for name in results["meta"]["strategies"]:
            row = ["| %s |" % LABELS[name]]
            for w in S.WORKLOADS:
                cell = cells.get("%s/%s" % (w, name))
                tx = cells.get("%s/txscope" % w)
                if not cell:
                    row.append(" - |")
                elif name == "txscope" or not tx:
                    row.append((" **%.0f** |" if name == "txscope" else " %.0f |") % cell["median_us"])
                else:
                    row.append(" %.0f (%.2fx) |" % (cell["median_us"], cell["median_us"] / tx["median_us"]))
            s = stale.get(name)
            row.append(" %d of %d |" % (s["stale"], s["reads"]) if s else " - |")
            lines.append("".join(row))
        lines.append("")
    if results.get("http"):
        lines += ["## Throughput over HTTP (PostgreSQL, mod_wsgi-express 3 processes x 4 threads, read page)", "",
                  "| strategy | requests/s (median) | vs txscope |", "|---|---|---|"]
        tx = results["http"].get("txscope", {}).get("median_rps")
        for name, cell in results["http"].items():
            lines.append("| %s | %.0f | %s |" % (LABELS[name], cell["median_rps"],
                                                 "%.2fx" % (cell["median_rps"] / tx) if tx else "-"))
        lines.append("")
    counts = results.get("instructions") or {}
    if counts:
        lines += ["## Instructions per request (valgrind callgrind, SQLite)", "",
                  "Deterministic, so immune to the neighbours' noise; microseconds are instructions",
                  "divided by bare web.py's own pace in this run.", "",
                  "| request | strategy | instructions | vs reference |", "|---|---|---|---|"]
        bare = counts.get("nodb/bare")
        bare_us = results["timing"].get("sqlite", {}).get("nodb/bare", {}).get("median_us")
        for key in sorted(counts, key=lambda k: (k.split("/")[0] != "nodb", k)):
            workload, name = key.split("/")
            ref = ""
            if workload == "nodb" and name != "bare" and bare:
                extra = counts[key] - bare
                ref = "%+.0f above bare" % extra
                if bare_us:
                    ref += " (about %+.1f us)" % (extra / (bare / bare_us))
            elif workload == "read" and name != "txscope" and counts.get("read/txscope"):
                ref = "txscope = %.2fx this" % (counts["read/txscope"] / counts[key])
            lines.append("| %s | %s | %.0f | %s |" % (WORKLOAD_LABELS[workload], LABELS[name], counts[key], ref))
        lines.append("")
    lines += ["## Targets", "", "| database | target | measured | met |", "|---|---|---|---|"]
    for t in results["targets"]:
        met = "yes" if t["met"] else "**no**"
        lines.append("| %s | %s | %s | %s |" % (t["backend"], t["target"], t["measured"], met))
    lines.append("")
    notes = os.path.join(HERE, "NOTES.md")
    if os.path.exists(notes):
        with open(notes) as f:
            lines += [f.read().rstrip(), ""]
    return "\n".join(lines)


def chart(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    backends = list(results["timing"])
    names = results["meta"]["strategies"]
    fig, axes = plt.subplots(len(backends), len(S.WORKLOADS), figsize=(4 * len(S.WORKLOADS), 3.2 * len(backends)),
                             squeeze=False)
    colors = {"bare": "#999999", "unsafe": "#d62728", "nocache": "#8c564b", "recipe": "#ff7f0e",
              "middleware": "#9467bd", "txscope": "#2ca02c"}
    for i, backend in enumerate(backends):
        for j, workload in enumerate(S.WORKLOADS):
            ax = axes[i][j]
            shown = [n for n in names if "%s/%s" % (workload, n) in results["timing"][backend]]
            values = [results["timing"][backend]["%s/%s" % (workload, n)]["median_us"] for n in shown]
            bars = ax.barh(range(len(shown)), values, color=[colors[n] for n in shown])
            ax.set_yticks(range(len(shown)))
            ax.set_yticklabels(shown if j == 0 else [""] * len(shown))
            ax.invert_yaxis()
            ax.set_xscale("log")
            ax.set_title("%s: %s" % (backend, WORKLOAD_LABELS[workload]), fontsize=9)
            ax.set_xlabel("microseconds per request (log)", fontsize=8)
            for bar, value in zip(bars, values):
                ax.text(value, bar.get_y() + bar.get_height() / 2, " %.0f" % value, va="center", fontsize=7)
            ax.set_xlim(right=max(values) * 4)
    fig.suptitle("Time per request (median, lower is better)", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


# -- main -------------------------------------------------------------------------------------------


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: few rounds, tiny batches")
    parser.add_argument("--backends", default="sqlite,postgres,mysql",
                        help="comma-separated subset of sqlite,postgres,mysql")
    parser.add_argument("--strategies", default=",".join(S.STRATEGIES))
    parser.add_argument("--no-http", action="store_true", help="skip the mod_wsgi throughput part")
    parser.add_argument("--no-stale", action="store_true", help="skip the two-process stale check")
    parser.add_argument("--rounds", type=int, help="rounds per database (default 21, quick 3)")
    parser.add_argument("--out", default=HERE, help="folder for results.md/.json/.png")
    parser.add_argument("--no-callgrind", action="store_true", help="skip the instruction counts")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--icount", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker_main(args.worker)
    if args.icount:
        name, workload, n, uri = args.icount
        return icount_main(name, workload, int(n), uri)

    opts = dict(QUICK if args.quick else FULL)
    if args.rounds:
        opts["rounds"] = args.rounds
    wanted = [s for s in args.strategies.split(",") if s]
    for s in wanted:
        if s not in S.STRATEGIES:
            parser.error("unknown strategy %r" % s)
    if "txscope" not in wanted:
        wanted.append("txscope")
    wanted = [s for s in S.STRATEGIES if s in wanted]
    backends = [b for b in args.backends.split(",") if b]
    os.makedirs(args.out, exist_ok=True)

    results = {"timing": {}, "stale": {}, "http": {}, "instructions": {}}
    with tempfile.TemporaryDirectory(prefix="txscope-bench-") as tmp:
        for backend in backends:
            uri = BACKENDS[backend] or "sqlite:" + os.path.join(tmp, "bench.db")
            ensure_database(uri)
            progress("%s: timing %d strategies x %d workloads, %d rounds"
                     % (backend, len(wanted), len(S.WORKLOADS), opts["rounds"]))
            results["timing"][backend] = time_backend(backend, uri, opts, wanted)
            if not args.no_stale:
                results["stale"][backend] = stale_check(backend, uri, opts["stale_trials"], wanted)
            if backend == "sqlite" and opts["callgrind"] and not args.no_callgrind:
                S.create_table(uri)
                results["instructions"] = instructions(uri, [p for p in ICOUNT_PAIRS if p[0] in wanted])
        if not args.no_http:
            try:
                results["http"] = http_throughput(BACKENDS["postgres"], opts)
            except Exception as e:  # noqa: BLE001 - the in-process results still stand
                progress("http: skipped (%s: %s)" % (type(e).__name__, str(e).splitlines()[0] if str(e) else ""))
                results["http_error"] = "%s: %s" % (type(e).__name__, e)
    results["targets"] = targets(results)
    results["meta"] = {
        "command": "python bench/run.py" + (" --quick" if args.quick else ""),
        "date": time.strftime("%Y-%m-%d"),
        "machine": platform.platform(),
        "python": platform.python_version(),
        "cpus": os.cpu_count() or 0,
        "seconds": time.monotonic() - START,
        "rounds": opts["rounds"],
        "strategies": wanted,
    }
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(results, f, indent=1, sort_keys=True)
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write(markdown(results))
    chart(results, os.path.join(args.out, "results.png"))
    progress("wrote %s/results.md, results.json, results.png" % args.out)
    for t in results["targets"]:
        met = "met" if t["met"] else "NOT met"
        progress("target %-8s %-50s %-9s %s" % (t["backend"], t["target"], t["measured"], met))
    return 0


if __name__ == "__main__":
    sys.exit(main())
