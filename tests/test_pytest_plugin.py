"""The pytest plugin: its helpers pass on the cookbook app and fail on broken ones.

The cookbook's handlers (app.py) are served through paste's TestApp, once
with a ``txscope`` on the backend's database, once without a processor but
with the process-wide connection ``load_sqlo()`` binds: the recipe's stale
setup.  Each helper must fail on the app it exists to catch.
"""

import gc
import json
import os
import re
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
import web
from sqlobject import sqlhub

from webpy_txscope.pytest_plugin import assert_fresh_read, assert_scope_closed, count_queries
from webapps import paste_app

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parent.parent
JSON = {"Content-Type": "application/json"}
WRITE = ("POST", "/api/users/1", {"fullname": "Before"}, JSON)
READ = "/api/users/1"
CHANGE = "UPDATE users SET fullname = 'After' WHERE id = 1"


@pytest.fixture(autouse=True)
def this_checkout_first(monkeypatch):
    """User suites run in a subprocess: they must load this checkout's plugin, not another install's."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))


@pytest.fixture(autouse=True)
def no_garbage_of_earlier_tests():
    """assert_scope_closed() reports every transaction still alive: not those earlier test
    files dropped, which only the garbage collector ends."""
    gc.collect()


@pytest.fixture(scope="module")
def cookbook():
    """The cookbook module (app.py), imported without touching the working directory."""
    os.environ.setdefault("TXSCOPE_CSRF_SECRET", "test-secret")
    import app

    return app


def cookbook_app(cookbook, *processors):
    app = web.application(cookbook.urls, vars(cookbook), autoreload=False)  # noqa: TXS101 (processors vary)
    for processor in processors:
        app.add_processor(processor)
    return app


@pytest.fixture
def scoped(cookbook, scope):
    """The cookbook as it ships: one transaction per request."""
    return paste_app(cookbook_app(cookbook, scope))


@pytest.fixture
def stale(cookbook, scope):
    """The recipe's bug: no processor, one connection (and its cache) for the whole process."""
    scope()
    return paste_app(cookbook_app(cookbook))


@pytest.fixture
def leaky(cookbook, scope):
    """A processor that binds a transaction to the thread and never restores it."""
    def leave_dirty(handler):
        sqlhub.threadConnection = scope.connection.transaction()
        return handler()

    yield paste_app(cookbook_app(cookbook, leave_dirty))
    leaked = sqlhub.threadingLocal.__dict__.get("connection")
    if leaked is not None:
        leaked.rollback()  # while still bound: expiring its instances goes through the hub


def post_before(testapp):
    return testapp.post("/api/users/1", json.dumps({"fullname": "Before"}), JSON)


def fresh_read(testapp, backend):
    return assert_fresh_read(testapp, write=WRITE, change=CHANGE, read=READ,
                             expect="After", stale="Before", uri=backend.uri)


# -- assert_fresh_read -------------------------------------------------------------


def test_fresh_read_passes_on_the_cookbook(scoped, backend):
    response = fresh_read(scoped, backend)
    assert json.loads(response.body)["fullname"] == "After"


def test_fresh_read_fails_without_a_processor(stale, backend):
    with pytest.raises(pytest.fail.Exception) as failed:
        fresh_read(stale, backend)
    message = str(failed.value)
    assert "served stale data" in message
    assert "still shows the old value 'Before'" in message
    assert "sent no SELECT" in message


def test_fresh_read_fails_when_the_stale_value_contains_the_expected_one(stale, backend):
    with pytest.raises(pytest.fail.Exception, match="but also the old value 'Before After'"):
        assert_fresh_read(stale, write=("POST", "/api/users/1", {"fullname": "Before After"}, JSON),
                          change=CHANGE, read=READ, expect="After", stale="Before After", uri=backend.uri)


def test_fresh_read_passes_when_the_expected_value_contains_the_stale_one(scoped, backend):
    assert_fresh_read(scoped, write=("POST", "/api/users/1", {"fullname": "Aft"}, JSON),
                      change=CHANGE, read=READ, expect="After", stale="Aft", uri=backend.uri)


def test_fresh_read_refuses_a_stale_value_equal_to_the_expected_one(scoped, backend):
    with pytest.raises(ValueError, match="the same value"):
        assert_fresh_read(scoped, write=WRITE, change=CHANGE, read=READ, expect="After", stale="After",
                          uri=backend.uri)


def test_fresh_read_accepts_callables(scoped, backend):
    assert_fresh_read(scoped, write=post_before, read=lambda testapp: testapp.get(READ),
                      change=lambda: backend.sql(CHANGE), expect="After")


def test_fresh_read_reports_a_failing_write(scoped, backend):
    with pytest.raises(pytest.fail.Exception, match=r"the write request POST /api/users/9 failed"):
        assert_fresh_read(scoped, write=("POST", "/api/users/9", {"fullname": "x"}, JSON),
                          change=CHANGE, read=READ, expect="After", uri=backend.uri)


def test_fresh_read_change_as_sql_needs_a_uri(scoped):
    with pytest.raises(TypeError, match="needs uri="):
        assert_fresh_read(scoped, write=WRITE, change=CHANGE, read=READ, expect="After")


# -- count_queries -----------------------------------------------------------------


def test_count_queries_sees_the_select_of_a_scoped_read(scoped, backend):
    post_before(scoped)
    with count_queries() as queries:
        scoped.get(READ)
    assert len(queries.selects) >= 1, queries


def test_count_queries_sees_no_select_for_a_cached_stale_read(stale, backend):
    post_before(stale)
    with count_queries() as queries:
        stale.get(READ)
    assert queries.count == 0, queries


def test_count_queries_sees_writes_in_autocommit(stale, backend):
    with count_queries() as queries:
        post_before(stale)
    assert any(re.match(r"\s*UPDATE", s, re.I) for s in queries.statements), queries


def test_a_database_free_page_sends_nothing(scoped, backend):
    with count_queries() as queries:
        scoped.get("/users/new")
    assert queries.count == 0, queries


def test_count_queries_sees_a_transaction_open_before_the_block(scope, backend):
    from models import User

    with scope.transaction():
        list(User.select(orderBy="id"))  # the transaction now keeps its _executeRetry
        with count_queries() as queries:
            list(User.select(orderBy="id"))
    assert len(queries.selects) == 1, queries


def test_count_queries_nests_and_restores_the_connection_classes(scope, backend):
    from models import User

    with count_queries() as outer:
        with count_queries() as inner:
            scope.connection.queryAll("SELECT 1")
        list(User.select(connection=scope.connection))
    assert (inner.count, outer.count) == (1, 2)
    assert not counting_classes()


def counting_classes():
    from sqlobject.dbconnection import DBAPI

    found, todo = [], [DBAPI]
    while todo:
        cls = todo.pop()
        todo.extend(cls.__subclasses__())
        if hasattr(cls.__dict__.get("_executeRetry"), "_txscope_original"):
            found.append(cls)
    return found


def test_count_queries_counts_other_threads(scope, backend):
    with count_queries() as queries:
        worker = threading.Thread(target=scope.connection.queryAll, args=("SELECT 1",))
        worker.start()
        worker.join()
    assert queries.count == 1, queries


def test_count_queries_sees_a_scope_opened_on_another_thread_before_the_block(scope, backend):
    from models import User

    opened, counting, done = threading.Event(), threading.Event(), threading.Event()

    def other_thread():
        with scope.transaction():
            list(User.select(orderBy="id"))  # the transaction now keeps its _executeRetry
            opened.set()
            assert counting.wait(10)
            list(User.select(orderBy="id"))
        done.set()

    worker = threading.Thread(target=other_thread)
    worker.start()
    assert opened.wait(10)
    with count_queries() as queries:
        counting.set()
        assert done.wait(10)
    worker.join(10)
    assert len(queries.selects) == 1, queries


# -- assert_scope_closed -------------------------------------------------------------


def test_scope_closed_fails_on_an_unbound_transaction_idle_in_transaction(scope, backend):
    from models import User

    tx = scope.connection.transaction()
    list(User.select(connection=tx))  # BEGIN ... SELECT, then nobody ends it
    try:
        with pytest.raises(pytest.fail.Exception, match="a transaction bound to no thread still holds a connection"):
            assert_scope_closed()
    finally:
        tx.rollback()
    assert_scope_closed()


def test_scope_closed_names_a_session_idle_in_transaction_on_postgres(server_scope, server_backend):
    tx = server_scope.connection.transaction()
    tx.query("SELECT 1")
    try:
        with pytest.raises(pytest.fail.Exception) as failed:
            assert_scope_closed()
    finally:
        tx.rollback()
    in_transaction = "in a transaction on the server" in str(failed.value)
    assert in_transaction == (server_backend.kind == "postgres"), str(failed.value)


def test_scope_closed_fails_on_another_threads_bound_transaction(scope, backend):
    bound, release = threading.Event(), threading.Event()
    tx = scope.connection.transaction()

    def worker_between_requests():
        sqlhub.threadConnection = tx
        bound.set()
        release.wait(10)
        del sqlhub.threadConnection

    worker = threading.Thread(target=worker_between_requests)
    worker.start()
    try:
        assert bound.wait(10)
        with pytest.raises(pytest.fail.Exception, match="another thread's threadConnection is a transaction"):
            assert_scope_closed()
    finally:
        release.set()
        worker.join(10)
        tx.rollback()


def test_scope_closed_after_cookbook_requests(scoped, backend):
    post_before(scoped)
    scoped.get(READ)
    scoped.post("/api/users/1/crash", json.dumps({"fullname": "x"}), JSON, expect_errors=True)
    assert_scope_closed()


def test_scope_closed_fails_on_a_processor_that_leaves_the_thread_dirty(leaky, backend):
    leaky.get(READ)
    with pytest.raises(pytest.fail.Exception, match="threadConnection is a transaction nobody will end"):
        assert_scope_closed()


def test_scope_closed_fails_on_a_finished_transaction_left_bound(scope, backend):
    tx = scope.connection.transaction()
    tx.rollback()
    sqlhub.threadConnection = tx
    with pytest.raises(pytest.fail.Exception, match="threadConnection is a finished transaction"):
        assert_scope_closed()


def test_scope_closed_fails_inside_an_open_scope(scope, backend):
    with scope.transaction():
        with pytest.raises(pytest.fail.Exception) as failed:
            assert_scope_closed()
    assert "a scope is still open on this thread" in str(failed.value)
    assert "1 scope(s) open in this process" in str(failed.value)
    assert_scope_closed()


def test_scope_closed_fails_on_a_process_wide_transaction(scope, backend):
    tx = scope.connection.transaction()
    sqlhub.processConnection = tx
    try:
        with pytest.raises(pytest.fail.Exception, match="processConnection is a transaction"):
            assert_scope_closed()
    finally:
        tx.rollback()


def test_scope_closed_fails_on_a_thread_connection_set_to_none(no_thread_connection):
    sqlhub.threadConnection = None
    with pytest.raises(pytest.fail.Exception, match="no longer falls back to processConnection"):
        assert_scope_closed()


# -- the fixtures in a user's test suite (installed through the entry point) -----------


def example_files():
    """The example of cookbook/testing.org, by file name: users copy it, so it must run."""
    org = (ROOT / "cookbook" / "testing.org").read_text()
    blocks = re.findall(r"#\+begin_src python :tangle (\S+)\n(.*?)#\+end_src", org, re.S | re.I)
    assert {name for name, _ in blocks} == {"myapp.py", "conftest.py", "test_myapp.py"}
    return {name: textwrap.dedent(code) for name, code in blocks}


@pytest.fixture
def user_suite(pytester, monkeypatch):
    monkeypatch.delenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    monkeypatch.delenv("TXSCOPE_TEST_URI", raising=False)
    for name, code in example_files().items():
        pytester.path.joinpath(name).write_text(code)
    return pytester


def test_the_cookbook_example_passes_in_a_user_suite(user_suite, backend):
    args = [] if backend.kind == "sqlite" else ["--txscope-uri", backend.uri]
    result = user_suite.runpytest_subprocess("-p", "no:cacheprovider", *args)
    result.assert_outcomes(passed=3)


@pytest.mark.parametrize("env, option, expected", [
    (None, None, "sqlite:*/txscope.db"),
    ("postgres://env@127.0.0.1/db", None, "postgres://env@127.0.0.1/db"),
    ("postgres://env@127.0.0.1/db", "mysql://option@127.0.0.1/db", "mysql://option@127.0.0.1/db"),
], ids=["default", "environment", "option-first"])
def test_where_txscope_uri_comes_from(pytester, monkeypatch, env, option, expected):
    monkeypatch.delenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    monkeypatch.delenv("TXSCOPE_TEST_URI", raising=False)
    if env:
        monkeypatch.setenv("TXSCOPE_TEST_URI", env)
    pytester.makepyfile("def test_uri(txscope_uri):\n    print('URI=' + txscope_uri)\n")
    args = ["--txscope-uri", option] if option else []
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-s", *args)
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*URI=" + expected])


def test_the_example_fails_when_its_processor_is_missing(user_suite):
    myapp = user_suite.path / "myapp.py"
    myapp.write_text(myapp.read_text().replace("app.add_processor(load_sqlo)", "load_sqlo()"))
    result = user_suite.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, failed=2)
    result.stdout.fnmatch_lines(["*served stale data*"])


def test_the_example_fails_in_one_line_without_its_processor(user_suite):
    myapp = user_suite.path / "myapp.py"
    myapp.write_text(myapp.read_text().replace("    app.add_processor(load_sqlo)\n", ""))
    result = user_suite.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(failed=3)
    result.stdout.fnmatch_lines(["*the request found no database connection*app.add_processor(txscope(uri))"] * 3)
    assert len(result.outlines) < 40, "\n".join(result.outlines)


def test_each_xdist_worker_gets_its_own_database(pytester, monkeypatch, server_backend):
    try:
        import xdist  # noqa: F401
    except ImportError:
        pytest.fail("pytest-xdist is not installed: pip install pytest-xdist")
    monkeypatch.delenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    monkeypatch.delenv("TXSCOPE_TEST_URI", raising=False)
    pytester.makepyfile(test_workers="""
        import os
        import pytest
        from sqlobject import connectionForURI

        @pytest.mark.parametrize("i", range(4))
        def test_database(txscope_uri, i):
            conn = connectionForURI(txscope_uri)
            conn.query("CREATE TABLE IF NOT EXISTS rows_%d (x INTEGER)" % i)
            assert conn.queryOne("SELECT COUNT(*) FROM rows_%d" % i)[0] == 0
            name = txscope_uri.split("/")[-1].split("?")[0]
            print("WORKER=%s DB=%s" % (os.environ["PYTEST_XDIST_WORKER"], name))
            assert name.endswith("_" + os.environ["PYTEST_XDIST_WORKER"])
    """)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-n", "2", "-s",
                                           "--txscope-uri", server_backend.uri)
    result.assert_outcomes(passed=4)
    database = server_backend.uri.split("/")[-1].split("?")[0]
    left = server_backend.sql("SELECT COUNT(*) FROM information_schema.schemata WHERE schema_name LIKE ?",
                              database + "_gw%") if server_backend.kind == "mysql" else \
        server_backend.sql("SELECT COUNT(*) FROM pg_database WHERE datname LIKE ?", database + "_gw%")
    assert left[0][0] == 0, "the workers' databases were not dropped"


def test_the_plugin_hides_deprecation_warnings_that_are_not_the_users(pytester, monkeypatch):
    monkeypatch.delenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    pytester.makeconftest("import sqlobject  # noqa: F401  (as an app's conftest.py does, through the app)\n")
    pytester.makepyfile("""
        import warnings

        def test_imports_formencode():
            import formencode  # noqa: F401  (SQLObject imports it; it imports cgi)

        def test_own_warning():
            warnings.warn("mine is deprecated", DeprecationWarning)
    """)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)
    assert "'cgi' is deprecated" not in result.stdout.str()
    result.stdout.fnmatch_lines(["*mine is deprecated*"])


def test_txscope_app_must_be_overridden(pytester, monkeypatch):
    monkeypatch.delenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    pytester.makepyfile("def test_it(txscope_testapp):\n    pass\n")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*txscope_app fixture is not overridden*"])


def test_loading_the_plugin_imports_no_driver_paste_or_app():
    heavy = ["paste.fixture", "webtest", "psycopg", "psycopg2", "MySQLdb", "pymysql", "prometheus_client", "app"]
    code = "import sys, webpy_txscope.pytest_plugin; print([m for m in %r if m in sys.modules])" % heavy
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd="/")
    assert out.stdout.strip() == "[]"


def test_a_suite_that_ignores_the_plugin_is_unaffected(pytester, monkeypatch):
    monkeypatch.delenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    pytester.makepyfile("def test_it():\n    assert True\n")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
