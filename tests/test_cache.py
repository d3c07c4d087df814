"""The per-transaction dogpile.cache backend, on every database and driver and every adapter."""

import sqlite3
import threading

import pytest
from dogpile.cache import make_region
from dogpile.cache.api import NO_VALUE
from paste.fixture import TestApp

import webpy_txscope.cache
from models import User
from webpy_txscope import ScopeManager, TxScopeMiddleware
from webapps import make_app


@pytest.fixture
def region():
    return make_region().configure("webpy_txscope.transaction")


@pytest.fixture
def counted(region):
    """``user_count()``: a cached ``SELECT COUNT(*)``, which SQLObject itself never caches."""
    @region.cache_on_arguments()
    def user_count():
        return User.select().count()

    return user_count


@pytest.fixture
def counts(scope):
    """How many ``COUNT(*)`` statements reached the database: ``counts()``."""
    sent = []
    conn = scope.connection
    real = conn._executeRetry

    def executing(raw, cursor, query):
        sent.append(query)
        return real(raw, cursor, query)

    conn._executeRetry = executing
    yield lambda: sum("COUNT(" in query.upper() for query in sent)
    del conn._executeRetry


@pytest.fixture(params=["webpy", "wsgi", "script"])
def request_(request, scope, backend):
    """``request_(fn, crash=False)``: run *fn* in one request of an adapter; return its result.

    With *crash*, the request fails after *fn*, so its scope rolls back.
    """
    def run(fn, crash=False):
        result = []

        def work():
            result.append(fn())
            if crash:
                raise ValueError("crash")

        try:
            if request.param == "webpy":
                make_app({"/": lambda: (work(), "ok")[1]}, scope).request("/")
            elif request.param == "wsgi":
                TestApp(TxScopeMiddleware(answering(work), backend.uri)).get("/")
            else:
                with scope.transaction():
                    work()
        except ValueError:
            pass
        return result[0]

    return run


def answering(work):
    def app(environ, start_response):
        work()
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    return app


def test_value_requested_twice_in_one_request_queries_once(request_, counted, counts):
    assert request_(lambda: (counted(), counted())) == (3, 3)
    assert counts() == 1


def test_value_never_survives_into_the_next_request(request_, counted, counts, backend):
    assert request_(counted) == 3
    backend.sql("INSERT INTO users (id, name, fullname, password) VALUES (4, 'user4', 'Full 4', 'x')")
    assert request_(counted) == 4
    assert counts() == 2


def test_value_is_gone_after_a_rollback(request_, counted, counts):
    assert request_(counted, crash=True) == 3
    assert request_(counted) == 3
    assert counts() == 2


def test_invalidate_within_the_request_recomputes(request_, counted, counts):
    def add_then_count():
        before = counted()
        User(id=4, name="user4", fullname="Full 4", password="x")
        counted.invalidate()
        return before, counted()

    assert request_(add_then_count) == (3, 4)
    assert counts() == 2


def test_outside_a_scope_nothing_is_cached(scope, region, counted, counts):
    scope()  # the process connection, as in a REPL
    assert (counted(), counted()) == (3, 3)
    assert counts() == 2
    region.set("key", "value")
    assert region.get("key") is NO_VALUE


def test_a_joined_scope_shares_the_values(scope, region):
    with scope.transaction():
        region.set("key", "outer")
        with scope.transaction():
            assert region.get("key") == "outer"


def test_each_thread_sees_only_its_own_scope(scope, region):
    seen = []

    def other_thread():
        with scope.transaction():
            seen.append(region.get("key"))

    with scope.transaction():
        region.set("key", "this thread")
        thread = threading.Thread(target=other_thread)
        thread.start()
        thread.join(30)
    assert seen == [NO_VALUE]


def test_a_retried_attempt_starts_with_no_values(scope, region):
    seen = []

    def unit_of_work():
        seen.append(region.get("key"))
        region.set("key", "attempt %d" % len(seen))
        if len(seen) == 1:
            User.select().count()  # a real transient error comes from a statement
            raise sqlite3.OperationalError("database is locked")  # transient: run it again
        return region.get("key")

    manager = ScopeManager(scope.connection, attempts=2, retry_backoff=0)
    assert manager.run(unit_of_work) == "attempt 2"
    assert seen == [NO_VALUE, NO_VALUE]


def test_every_backend_operation_within_a_scope(scope, region):
    backend = region.backend
    with scope.transaction():
        backend.set("a", 1)
        backend.set_multi({"b": 2, "c": 3})
        assert backend.get("a") == 1
        assert backend.get_multi(["a", "b", "c", "d"]) == [1, 2, 3, NO_VALUE]
        backend.delete("a")
        backend.delete_multi(["b", "d"])
        assert backend.get_multi(["a", "b", "c"]) == [NO_VALUE, NO_VALUE, 3]
    with scope.transaction():
        assert backend.get("c") is NO_VALUE


def test_every_backend_operation_outside_a_scope_caches_nothing(region):
    backend = region.backend
    backend.set("a", 1)
    backend.set_multi({"b": 2})
    backend.delete("a")
    backend.delete_multi(["b"])
    assert backend.get("a") is NO_VALUE
    assert backend.get_multi(["a", "b"]) == [NO_VALUE, NO_VALUE]


def test_the_backend_takes_no_arguments():
    with pytest.raises(ValueError, match="takes no arguments"):
        make_region().configure("webpy_txscope.transaction", arguments={"expiration_time": 60})


def test_backend_is_registered_under_its_documented_name():
    assert webpy_txscope.cache.NAME == "webpy_txscope.transaction"
    assert isinstance(make_region().configure(webpy_txscope.cache.NAME).backend,
                      webpy_txscope.cache.TransactionBackend)


# -- no lock shared between transactions, one namespace per region ----------------------


def test_two_requests_computing_the_same_key_do_not_wait_for_each_other(scope, region):
    """Each computes its own value: a process-wide lock per key would make the second wait
    for the first, which here waits for the second."""
    first_inside, second_done = threading.Event(), threading.Event()

    @region.cache_on_arguments()
    def slow(key):
        if threading.current_thread().name == "first":
            first_inside.set()
            assert second_done.wait(10), "the second request never computed its value"
        return f"{threading.current_thread().name} {User.select().count()}"

    results = {}

    def request(name):
        with scope.transaction():
            if name == "second":
                assert first_inside.wait(10)
            results[name] = slow("same key")
            if name == "second":
                second_done.set()

    threads = [threading.Thread(target=request, args=(name,), name=name) for name in ("first", "second")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert results == {"first": "first 3", "second": "second 3"}


def test_a_row_lock_and_the_same_key_do_not_deadlock(server_scope, server_backend, region):
    """The second request holds a row lock and computes the key the first is computing, which
    waits for that row: without a lock per key in Python, the second finishes, then the first."""
    lock_timeout = {"postgres": "SET LOCAL lock_timeout = '10s'",
                    "mysql": "SET SESSION innodb_lock_wait_timeout = 10"}[server_backend.kind]
    second_locked, first_inside = threading.Event(), threading.Event()
    from sqlobject import sqlhub

    @region.cache_on_arguments()
    def rename(key):
        first_inside.set()
        sqlhub.getConnection().query("UPDATE users SET fullname = 'renamed' WHERE id = 1")
        return threading.current_thread().name

    results, errors = {}, []

    def request(name):
        try:
            with server_scope.transaction():
                sqlhub.getConnection().query(lock_timeout)
                if name == "second":
                    sqlhub.getConnection().query("UPDATE users SET fullname = 'second' WHERE id = 1")
                    second_locked.set()
                    assert first_inside.wait(10)
                else:
                    assert second_locked.wait(10)
                results[name] = rename("user 1")
        except Exception as e:
            errors.append(e)

    threads = [threading.Thread(target=request, args=(name,), name=name) for name in ("first", "second")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    assert results == {"first": "first", "second": "second"}


def test_each_region_has_its_own_values(scope, region):
    other = make_region().configure("webpy_txscope.transaction")
    with scope.transaction():
        region.set("key", "mine")
        assert other.get("key") is NO_VALUE
        other.set("key", "theirs")
        assert region.get("key") == "mine"


def test_a_cached_value_keeps_a_database_free_request_untouched(scope, region):
    """Values live beside the transaction: the scope still ends as untouched, and its reuse by
    the thread's next request starts with no values."""
    from webpy_txscope import stats

    def remember():
        before = region.get("key")
        region.set("key", "first request")
        return "empty" if before is NO_VALUE else f"stale: {before}"

    app = make_app({"/": remember}, scope)
    untouched = stats()["untouched"]
    assert [app.request("/").data for _ in range(3)] == [b"empty"] * 3
    assert stats()["untouched"] == untouched + 3
