"""Model-based test: generated request sequences against a small model of the rules.

Hypothesis generates sequences of requests (tests/model_support.py says what a
request can do) and serves each with the package's public API: a web.py app
with the ``txscope`` processor, or a plain WSGI app behind
``TxScopeMiddleware``.  After every request the test compares the real run
with the model: the rows another client sees, the response, the hooks that
ran, the thread's state, and what the request left on the database (an open
transaction, a leaked connection).  The garbage collector is off while a
request runs and is checked, so a leak cannot hide behind a lucky collection.

A stateful test (not one program per example) because what one request
leaves behind (a lock, a pooled connection in a bad state, a rebound thread)
shows in the next one.

Bounded for CI; ``TXSCOPE_MODEL_EXAMPLES=5000`` runs the long profile (see
README.org, "Model-based test").
"""

import gc
import os
import time

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, rule, run_state_machine_as_test
from sqlobject import sqlhub

from model_support import Apps, Database, Run, predict, programs
from webpy_txscope import SharedCache, current_scope, stats

EXAMPLES = int(os.environ.get("TXSCOPE_MODEL_EXAMPLES", "80"))
STEPS = int(os.environ.get("TXSCOPE_MODEL_STEPS", "8"))
_ABSENT = object()


@pytest.fixture(scope="module", params=["sqlite", "postgres", "sqlite+cache", "postgres+cache"])
def database(request, tmp_path_factory):
    kind, _, cached = request.param.partition("+")
    tmp = str(tmp_path_factory.mktemp("model"))
    db = Database(kind, tmp)
    if cached:  # the same model through the shared cache: it must change no answer
        db.cache = SharedCache(f"local:{os.path.join(tmp, 'tokens')}", lease=0.05)
        while db.cache.store.read(("txscope_model_rows",))[1]:  # the new store's warm-up lease
            time.sleep(0.01)
    yield db
    sqlhub.threadingLocal.__dict__.pop("connection", None)
    db.close()


def machine_for(db: Database, apps: Apps):
    class RequestSequences(RuleBasedStateMachine):
        def __init__(self):
            super().__init__()
            self.committed: list[str] = []
            self.rid = 0

        @initialize()
        def empty_tables(self):
            db.reset()

        @rule(program=programs(db.kind))
        def request(self, program):
            self.rid += 1
            expected, also = predict(program, db.kind, self.committed, self.rid)
            run = Run(program, db, self.rid, apps.scopes[program.attempts])
            hub = sqlhub.threadingLocal.__dict__
            prior = apps.scopes[1].connection if program.prior else _ABSENT
            if prior is _ABSENT:
                hub.pop("connection", None)
            else:
                hub["connection"] = prior
            gc.collect()
            gc.disable()
            try:
                actual = apps.serve(run)
                problems = self.compare(program, expected, also, actual, run)
                after = hub.get("connection", _ABSENT)
                if after is not prior:
                    problems.append(f"thread connection after the request is {after!r}, was {prior!r}")
                if current_scope() is not None:
                    problems.append(f"a scope is still current on the thread: {current_scope()!r}")
                if stats()["open_scopes"]:
                    problems.append(f"{stats()['open_scopes']} scopes still open")
                problems += db.leftovers()
            finally:
                hub.pop("connection", None)
                gc.enable()
            self.committed = db.rows()  # follow the database, so that one discrepancy is reported once
            assert not problems, f"{program!r}\n  " + "\n  ".join(problems)

        @rule(count=st.integers(1, 2))
        def another_client_writes(self, count):
            for _ in range(count):
                self.rid += 1
                db.execute("INSERT INTO txscope_model_rows (tag) VALUES (?)", (f"o{self.rid}",))
            self.committed = db.rows()

        @staticmethod
        def compare(program, expected, also, actual, run) -> list[str]:
            problems = []
            if actual.status != expected.status and actual.status not in also:
                problems.append(f"status {actual.status!r}, expected {expected.status!r}")
            if expected.chunks is not None and actual.status == expected.status:
                complete = actual.chunks == expected.chunks
                if expected.truncated:
                    complete = actual.chunks == expected.chunks[:len(actual.chunks)]
                if not complete:
                    problems.append(f"body {actual.chunks!r}, expected {expected.chunks!r}"
                                    + (" or a prefix" if expected.truncated else ""))
            if expected.aborted is not None and actual.status == expected.status \
                    and actual.aborted != expected.aborted:
                problems.append("the body raised (the server aborts)" if actual.aborted else
                                "the body ended cleanly, expected the server to abort it")
            rows = db.rows()
            if rows != sorted(expected.rows):
                missing = sorted(set(expected.rows) - set(rows))
                extra = sorted(set(rows) - set(expected.rows))
                problems.append(f"rows: missing {missing}, unexpected {extra}")
            problems += _compare_hooks(run.fired, expected.fired)
            if run.reads not in (expected.reads, expected.reads + expected.reads_ahead):
                problems.append(f"reads saw counts {run.reads}, expected {expected.reads}")
            problems += run.notes + actual.notes
            return problems

    return RequestSequences


def _compare_hooks(fired: list[str], expected: list[str]) -> list[str]:
    """Hooks ran once each, in order; a hook registered by a hook may run (after it) or not: undecided."""
    problems = []
    direct = [tag for tag in fired if not tag.endswith("+")]
    if direct != expected:
        problems.append(f"hooks ran {direct}, expected {expected}")
    for tag in fired:
        if tag.endswith("+"):
            parent = tag[:-1]
            if fired.count(tag) > 1 or parent not in fired or fired.index(parent) > fired.index(tag):
                problems.append(f"hook registered by hook {parent} ran wrongly: {fired}")
    return problems


def test_request_sequences_follow_the_model(database):
    apps = Apps(database)
    hits = stats()["cache_hits"]
    run_state_machine_as_test(
        machine_for(database, apps),
        settings=settings(max_examples=EXAMPLES, stateful_step_count=STEPS, deadline=None,
                          derandomize="TXSCOPE_MODEL_EXAMPLES" not in os.environ, database=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                                 HealthCheck.filter_too_much]),
    )
    if database.cache is not None:
        assert stats()["cache_hits"] > hits, "the shared cache served nothing: the run did not exercise it"
