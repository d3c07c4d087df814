"""The benchmark's smoke run produces a row for every strategy (no timing is asserted)."""

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
