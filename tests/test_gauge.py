"""The open-scope gauge: what it reports, when it warns, and its Prometheus export."""

import logging

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from models import User
from webpy_txscope import export_prometheus, oldest_scope_age, open_scopes, stats, txscope
from webpy_txscope._metrics import check_scope_ages


@pytest.fixture
def warnings_logged(caplog):
    caplog.set_level(logging.WARNING, logger="webpy_txscope")

    def still_open():
        return [r for r in caplog.records if r.name == "webpy_txscope" and "still open" in r.getMessage()]

    return still_open


# -- what the gauge reports ---------------------------------------------------------


def test_gauge_counts_a_scope_while_it_is_open(scope, backend):
    before = open_scopes()
    with scope.transaction():
        User.get(1).fullname
        assert open_scopes() == before + 1
        assert oldest_scope_age() > 0
        assert stats()["open_scopes"] == before + 1
    assert open_scopes() == before


# -- warnings about scopes still open past their limit ------------------------------------


def test_reading_the_gauge_warns_about_a_scope_older_than_max_age(scope, backend, warnings_logged):
    strict = txscope(backend.uri, max_age=0)
    with strict.transaction():
        User.get(1).fullname
        oldest_scope_age()
        assert len(warnings_logged()) == 1
    assert "limit of 0.0s" in warnings_logged()[0].getMessage()


def test_stats_warns_too(scope, backend, warnings_logged):
    with txscope(backend.uri, max_age=0).transaction():
        stats()
    assert len(warnings_logged()) == 1


def test_a_scope_is_reported_once_however_often_the_gauge_is_read(scope, backend, warnings_logged):
    with txscope(backend.uri, max_age=0).transaction():
        for _ in range(3):
            oldest_scope_age()
        assert check_scope_ages() == 1
    assert len(warnings_logged()) == 1


def test_no_warning_within_the_limit(scope, backend, warnings_logged):
    with txscope(backend.uri, max_age=3600).transaction():
        User.get(1).fullname
        assert check_scope_ages() == 0
        oldest_scope_age()
    assert warnings_logged() == []


def test_no_warning_without_a_limit(scope, backend, warnings_logged):
    with scope.transaction():
        User.get(1).fullname
        oldest_scope_age()
    assert warnings_logged() == []


def test_an_explicit_limit_applies_to_every_open_scope(scope, backend, warnings_logged):
    with scope.transaction():
        assert check_scope_ages(3600) == 0
        assert check_scope_ages(0) == 1
    assert len(warnings_logged()) == 1


def test_closed_scopes_are_not_checked(scope, backend, warnings_logged):
    with txscope(backend.uri, max_age=0).transaction():
        pass
    assert check_scope_ages(0) == 0
    assert warnings_logged() == []


# -- Prometheus ------------------------------------------------------------------------


def scrape(registry):
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in generate_latest(registry).decode().splitlines() if not line.startswith("#")}


def test_export_into_a_fresh_registry(scope, backend):
    registry = CollectorRegistry()
    export_prometheus(registry)
    with scope.transaction():
        User.get(1).fullname
        metrics = scrape(registry)
    assert metrics["txscope_open_scopes"] == open_scopes() + 1
    assert metrics["txscope_oldest_scope_age_seconds"] > 0
    assert {"txscope_commits_total", "txscope_rollbacks_total", "txscope_failed_commits_total",
            "txscope_retries_total"} <= set(metrics)
    assert scrape(registry)["txscope_commits_total"] == stats()["commits"]


def test_every_registry_gets_the_figures():
    first, second = CollectorRegistry(), CollectorRegistry()
    export_prometheus(first)
    export_prometheus(second)
    assert "txscope_open_scopes" in scrape(first)
    assert "txscope_open_scopes" in scrape(second)


def test_exporting_twice_into_one_registry_registers_once():
    registry = CollectorRegistry()
    export_prometheus(registry)
    export_prometheus(registry)
    text = generate_latest(registry).decode()
    assert text.count("# TYPE txscope_open_scopes gauge") == 1
