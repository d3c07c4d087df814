"""The read page on the primary only vs on replicas, in each consistency mode, in one run.

    python bench/replicas.py            # about 2 minutes on 2 cores
    python bench/replicas.py --quick    # a smoke run of the same steps

It starts a private PostgreSQL primary with two streaming replicas
(tests/pg_cluster.py: Debian's PostgreSQL 15 binaries, run as ``postgres``)
and measures the benchmark's read page (``GET /items``, 50 rows, see
strategies.py) served by ``txscope``:

* **Per request, in-process**: the WSGI callable with a hand-built environ,
  configurations interleaved round by round, the median over rounds.  What
  replicas add is the routing: nothing for a session-mode client whose
  position a replica is known to have replayed, one round trip to the primary
  per read in strong mode, and one to the server that answered, after the
  read, to give the client its position (session mode).
* **Over HTTP**: the same page under mod_wsgi-express (3 processes x 4
  threads) per configuration, in rotating rounds; the median requests/s.

The replicas here apply commits as soon as they can, and every server shares
the same two cores: the figures show the cost of the checks, not the capacity
that replicas on their own machines add.  Results: ``bench/replicas.md`` and
``bench/replicas.json`` (or ``--out DIR``).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
for path in (HERE, ROOT, os.path.join(ROOT, "tests")):
    if path not in sys.path:
        sys.path.insert(0, path)

import strategies as S  # noqa: E402
from pg_cluster import PgCluster  # noqa: E402
from run import load  # noqa: E402

from webpy_txscope import txscope  # noqa: E402

CONFIGS = {
    "primary": "primary only (no replicas=)",
    "session-new": "session, a client without a position",
    "session-known": "session, a client whose position the replicas replayed",
    "strong": "strong",
}
WSGI_FILE = os.path.join(HERE, "modwsgi_replicas.wsgi")
FULL = dict(rounds=21, batch=200, http_rounds=3, http_seconds=5.0)
QUICK = dict(rounds=3, batch=20, http_rounds=1, http_seconds=1.0)


def progress(message: str) -> None:
    sys.stderr.write(f"[replicas bench] {message}\n")


def build(config: str, primary: str, replicas: list[str]):
    """The read page's WSGI callable for *config*, and the Cookie header its client sends."""
    options = {}
    if config != "primary":
        options = dict(replicas=replicas, consistency="strong" if config == "strong" else "session")
    app = S.make_webpy_app(S.Store(S.Item))
    app.add_processor(txscope(S.private_connection(primary), **options))
    return app.wsgifunc()


def per_request(cluster, opts) -> dict[str, dict]:
    primary = cluster.primary.uri()
    replicas = [r.uri() for r in cluster.replicas]
    apps = {config: build(config, primary, replicas) for config in CONFIGS}
    cookie = f"txscope_pos={cluster.position()}"
    cluster.wait_replayed()
    cookies = {"session-known": cookie}
    samples: dict[str, list[float]] = {config: [] for config in CONFIGS}
    names = list(CONFIGS)
    for r in range(opts["rounds"]):
        for config in names[r % len(names):] + names[:r % len(names)]:
            samples[config].append(_batch(apps[config], cookies.get(config), opts["batch"]))
        progress(f"round {r + 1}/{opts['rounds']}: " + ", ".join(
            f"{c} {samples[c][-1] * 1e6:.0f} us" for c in names))
    base = statistics.median(samples["primary"])
    return {config: {"median_us": statistics.median(v) * 1e6,
                     "added_us": (statistics.median(v) - base) * 1e6,
                     "ratio": statistics.median(v) / base} for config, v in samples.items()}


def _batch(wsgi, cookie: str | None, n: int) -> float:
    envs = []
    for _ in range(n):
        env = S.environ("GET", "/items")
        if cookie:
            env["HTTP_COOKIE"] = cookie
        envs.append(env)
    statuses = []

    def start_response(status, headers, exc_info=None):
        statuses.append(status)

    gc.collect()
    t0 = time.perf_counter()
    for env in envs:
        for _ in wsgi(env, start_response):
            pass
    elapsed = time.perf_counter() - t0
    if set(statuses) != {"200 OK"}:
        raise RuntimeError(f"the read page answered {sorted(set(statuses))}")
    return elapsed / n


def http(cluster, opts) -> dict[str, dict]:
    import modwsgi

    configs = ("primary", "session-new", "strong")
    env = {"BENCH_URI": cluster.primary.uri(), "BENCH_REPLICAS": ",".join(r.uri() for r in cluster.replicas)}
    samples: dict[str, list[float]] = {config: [] for config in configs}
    with contextlib.ExitStack() as stack:
        servers = {}
        for config in configs:
            progress(f"http: starting mod_wsgi-express for {config}")
            servers[config] = stack.enter_context(modwsgi.serve(
                WSGI_FILE, python_path=[HERE], processes=3, threads=4, env=dict(env, BENCH_CONFIG=config)))
        for server in servers.values():  # warm every daemon process
            load(server.url + "/items", 0.5)
        for r in range(opts["http_rounds"]):
            for config in configs[r % 3:] + configs[:r % 3]:
                samples[config].append(load(servers[config].url + "/items", opts["http_seconds"]))
                progress(f"http: round {r + 1} {config} {samples[config][-1]:.0f} requests/s")
    return {config: {"median_rps": statistics.median(v), "samples": v} for config, v in samples.items()}


def markdown(results: dict) -> str:
    lines = ["# The read page with read replicas", "",
             f"`{results['command']}` on {results['machine']}, {results['written']}.", "",
             "| configuration | median per request | added by the routing | ratio |",
             "|---|---:|---:|---:|"]
    for config, label in CONFIGS.items():
        row = results["per_request"][config]
        lines.append(f"| {label} | {row['median_us']:.0f} us | {row['added_us']:+.0f} us | {row['ratio']:.2f} |")
    if results.get("http"):
        lines += ["", "| over HTTP (mod_wsgi 3 x 4) | median requests/s |", "|---|---:|"]
        for config, row in results["http"].items():
            lines.append(f"| {CONFIGS[config]} | {row['median_rps']:.0f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: few rounds, small batches")
    parser.add_argument("--no-http", action="store_true", help="skip the mod_wsgi throughput part")
    parser.add_argument("--out", default=HERE, help="folder for replicas.md/.json")
    args = parser.parse_args(argv)
    opts = QUICK if args.quick else FULL
    with PgCluster(replicas=2, dbname="txscope_bench") as cluster:
        S.create_table(cluster.primary.uri())
        results = {"command": "python bench/replicas.py" + (" --quick" if args.quick else ""),
                   "machine": f"{os.cpu_count()} cores", "written": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                   "per_request": per_request(cluster, opts)}
        if not args.no_http:
            results["http"] = http(cluster, opts)
    with open(os.path.join(args.out, "replicas.json"), "w") as f:
        json.dump(results, f, indent=1)
    with open(os.path.join(args.out, "replicas.md"), "w") as f:
        f.write(markdown(results))
    sys.stdout.write(markdown(results))


if __name__ == "__main__":
    main()
