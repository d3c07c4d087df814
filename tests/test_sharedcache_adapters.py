"""The shared cache through the adapters: txscope(cache=...), TxScopeMiddleware, scope_options, opt-outs."""

from __future__ import annotations

import logging

import pytest
import web
from e2e_support import TcpProxy
from paste.fixture import TestApp
from sqlobject import SQLObject, StringCol
from test_sharedcache import REDIS_URL, redis_db, settled  # noqa: F401 (redis_db: a fixture used here)
from webapps import make_app

from models import User
from webpy_txscope import ConfigurationError, SharedCache, TxScopeMiddleware, scope_options, stats, txscope
from webpy_txscope._tx import ScopeTransaction


def options(backend) -> dict:
    # MariaDB's default REPEATABLE READ bypasses the cache: choose READ COMMITTED to cache there.
    return {"isolation": "READ COMMITTED"} if backend.kind == "mysql" else {}


def cached_scope(backend, cache, **extra) -> txscope:
    scope = txscope(backend.uri, cache=cache, **options(backend), **extra)
    settled(scope.manager.cache)
    return scope


def user_app(scope):
    def show(user_id):
        return User.get(int(user_id)).fullname

    def rename(user_id):
        User.get(int(user_id)).fullname = web.input().fullname
        User.select().count()  # a read of a table this request wrote: from the database
        return "ok"

    return make_app({"/user/(\\d+)": show, "/rename/(\\d+)": rename}, scope)


def counted():
    before = stats()
    return lambda name: stats()[name] - before[name]


def test_a_repeated_page_is_served_from_the_cache_and_a_write_elsewhere_is_seen_at_once(scope, backend, tmp_path):
    spec = f"local:{tmp_path / 'tokens'}"
    one, two = user_app(cached_scope(backend, spec)), user_app(cached_scope(backend, spec))  # two processes
    delta = counted()
    assert one.request("/user/1").data == b"Full 1"
    assert one.request("/user/1").data == b"Full 1"
    assert delta("cache_hits") == 1
    assert two.request("/rename/1", method="POST", data={"fullname": "new"}).data == b"ok"
    assert one.request("/user/1").data == b"new"
    assert delta("cache_invalidations") == 2  # the row's token and the table's selects' token


@pytest.mark.usefixtures("redis_db")
def test_a_write_the_store_cannot_mark_is_retried_rolled_back_and_answers_503(scope, backend, caplog):
    proxy = TcpProxy(6379)
    proxy.open()
    try:
        app = user_app(cached_scope(backend, f"redis://127.0.0.1:{proxy.port}/11", attempts=2, retry_after=7))
        proxy.close()
        assert app.request("/user/2").data == b"Full 2"  # reads go to the database
        answer = app.request("/rename/2", method="POST", data={"fullname": "refused"})
    finally:
        proxy.close()
    assert answer.status.startswith("503") and answer.headers["Retry-After"] == "7"
    assert answer.data == (b"A service this site needs is unavailable and nothing of this request was kept; "
                           b"please try again shortly.\n")
    assert backend.fullname(2) == "Full 2"
    assert "the write was rolled back" in caplog.text
    assert "retrying (attempt 2 of 2)" in caplog.text  # the store may be back for the next attempt
    assert "database is unreachable" not in caplog.text.lower()  # the database is fine


@pytest.mark.usefixtures("redis_db")
def test_a_commit_whose_invalidation_failed_answers_500_not_the_success(scope, backend, caplog):
    other = user_app(cached_scope(backend, REDIS_URL))  # another process, whose Redis stays reachable
    assert other.request("/user/1").data == b"Full 1"
    proxy = TcpProxy(6379)
    proxy.open()
    try:
        txs = cached_scope(backend, f"redis://127.0.0.1:{proxy.port}/11")
        store = txs.manager.cache.store
        begin_write = store.begin_write

        def then_lose_the_store(tables, writer):
            begin_write(tables, writer)
            proxy.close()

        store.begin_write = then_lose_the_store
        answer = user_app(txs).request("/rename/1", method="POST", data={"fullname": "new"})
    finally:
        proxy.close()
    assert answer.status.startswith("500")
    assert answer.data == (b"The changes were saved, but the request could not be completed. "
                           b"Reload the page to see them.\n")
    assert backend.fullname(1) == "new"  # durable: only the answer says it was not fine
    assert "the write was committed, but" in caplog.text
    assert other.request("/user/1").data == b"new"


def test_scope_options_cache_false_reads_from_the_database(scope, backend, tmp_path):
    @scope_options(cache=False)
    def fresh(user_id):
        return User.get(int(user_id)).fullname

    app = make_app({"/fresh/(\\d+)": fresh}, cached_scope(backend, f"local:{tmp_path / 'tokens'}"))
    delta = counted()
    app.request("/fresh/1")
    app.request("/fresh/1")
    assert delta("cache_hits") == 0 and delta("cache_bypasses") == 2


class Note(SQLObject):
    class sqlmeta:
        table = "notes"
        txscope_cache = False  # the per-model opt-out

    body = StringCol(length=100)


def test_a_model_whose_sqlmeta_opts_out_is_never_cached(scope, backend, tmp_path):
    Note.createTable(ifNotExists=True, connection=scope.connection)
    backend.sql("DELETE FROM notes")
    backend.sql("INSERT INTO notes (id, body) VALUES (1, 'first')")

    def show(note_id):
        return Note.get(int(note_id)).body

    app = make_app({"/note/(\\d+)": show}, cached_scope(backend, f"local:{tmp_path / 'tokens'}"))
    delta = counted()
    app.request("/note/1")
    backend.sql("UPDATE notes SET body = 'second' WHERE id = 1")  # from outside, without invalidate()
    assert app.request("/note/1").data == b"second"
    assert delta("cache_hits") == 0


def test_the_middleware_takes_the_same_cache_option(scope, backend, tmp_path):
    def wsgi_app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [User.get(1).fullname.encode()]

    middleware = TxScopeMiddleware(wsgi_app, backend.uri, cache=f"local:{tmp_path / 'tokens'}", **options(backend))
    settled(middleware.manager.cache)
    client = TestApp(middleware)
    delta = counted()
    assert client.get("/").body == b"Full 1"
    assert client.get("/").body == b"Full 1"
    assert delta("cache_hits") == 1


def test_without_a_cache_a_scope_makes_the_plain_transaction(scope):
    assert scope.manager.transaction_class is ScopeTransaction
    assert scope.manager.cache is None


def test_a_shared_cache_object_carries_its_own_limits(scope, backend, tmp_path):
    cache = SharedCache(f"local:{tmp_path / 'tokens'}", max_entries=2)
    assert txscope(backend.uri, cache=cache).manager.cache is cache


@pytest.mark.parametrize("value, message", [
    ("memcached://x", 'use cache="local"'),
    (42, "cache must be 'local', a redis:// URL or a SharedCache"),
])
def test_a_bad_cache_setting_fails_at_startup_naming_the_fix(scope, value, message):
    with pytest.raises(ConfigurationError, match=message):
        txscope(scope.connection, cache=value)


def test_a_redis_url_with_a_password_is_never_shown(scope):
    cache = SharedCache("redis://:hunter2@127.0.0.1:1/11")
    assert "hunter2" not in repr(cache)


def test_bypasses_are_logged_at_debug_with_their_reason(scope, backend, tmp_path, caplog):
    app = user_app(cached_scope(backend, f"local:{tmp_path / 'tokens'}"))
    with caplog.at_level(logging.DEBUG, logger="webpy_txscope"):
        app.request("/rename/1", method="POST", data={"fullname": "x"})
    assert "cache bypassed (this transaction wrote one of its tables)" in caplog.text
