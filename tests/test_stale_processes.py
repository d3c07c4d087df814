"""The recipe's bug itself, in two real OS processes, and the cure."""

import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


class Worker:
    """A cookbook worker process with its own cached connection."""

    def __init__(self, uri, enabled):
        env = dict(os.environ, TXSCOPE_DATABASE_URI=uri, TXSCOPE_ENABLED=enabled,
                   TXSCOPE_CSRF_SECRET="test-secret", PYTHONPATH=ROOT)
        self.proc = subprocess.Popen([sys.executable, os.path.join(HERE, "stale_worker.py")], cwd=ROOT, env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def ask(self, line):
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        answer = self.proc.stdout.readline()
        assert answer, "worker died on %r" % line
        return answer.strip()

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(30)


@pytest.fixture
def workers(scope, backend):
    started = []

    def start(enabled):
        started.append(Worker(backend.uri, enabled))
        return started[-1]

    yield start
    for w in started:
        w.close()


@pytest.mark.parametrize("enabled, expected", [("0", "Full 1"), ("1", "changed by B")],
                         ids=["without-processor-stale", "with-processor-fresh"])
def test_a_row_changed_by_another_process(workers, enabled, expected):
    a, b = workers(enabled), workers(enabled)
    assert a.ask("GET 1") == "Full 1"  # A has the row in its cache now
    assert b.ask("SET 1 changed by B") == "changed by B"
    assert a.ask("GET 1") == expected


def test_interactive_use_in_a_fresh_process(scope, backend):
    code = "from app import *\nload_sqlo()\nprint([u.fullname for u in User.select(orderBy='id')])\n"
    env = dict(os.environ, TXSCOPE_DATABASE_URI=backend.uri, TXSCOPE_CSRF_SECRET="test-secret")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "['Full 1', 'Full 2', 'Full 3']", out.stderr
