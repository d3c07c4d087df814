"""The benchmarks' smoke runs produce a row for every strategy (no timing is asserted)."""

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STRATEGIES = ("bare", "unsafe", "nocache", "recipe", "middleware", "txscope")


def test_quick_benchmark_reports_every_strategy(tmp_path):
    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / "run.py"), "--quick", "--backends", "sqlite,postgres",
         "--no-http", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    for backend in ("sqlite", "postgres"):
        for workload in ("read", "get", "write", "nodb"):
            for name in STRATEGIES:
                assert "%s/%s" % (workload, name) in results["timing"][backend]
    table = (tmp_path / "results.md").read_text()
    assert "webpy_txscope" in table and "published load_sqlo recipe" in table
    assert (tmp_path / "results.png").stat().st_size > 0


def test_quick_shared_cache_benchmark_reports_every_strategy_in_process_and_over_http(tmp_path):
    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / "sharedcache.py"), "--quick", "--backends", "sqlite", "--http",
         "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((tmp_path / "sharedcache_results.json").read_text())
    for workload in ("read", "get", "write"):
        for name in ("unsafe", "txscope", "local", "local-miss", "redis"):
            assert f"{workload}/{name}" in results["timing"]["sqlite"]
    http = results["http"]["sqlite"]
    for workload in ("read", "get"):
        for name in ("bare", "unsafe", "txscope", "local", "redis"):
            assert http["rps"][f"{workload}/{name}"] > 0
    for name in ("local", "redis"):  # the daemons served the timed requests from the cache
        assert http["counters"][name]["cache_hits"] > 0, http["counters"]
    assert "get by id, local / txscope" in (tmp_path / "sharedcache_results.md").read_text()
