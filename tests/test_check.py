"""txscope-check against in-process fakes of the cookbook's JSON API.

Each fake has one deliberate fault (or none), so every count the checker
reports can be predicted exactly from its options.
"""

import contextlib
import doctest
import itertools
import json
import re
import socket
import threading
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import pytest

from webpy_txscope import check

WORKERS = ("101", "102", "103")
# 2 clients x 2 rows x 3 rounds; 4 reads after each write and after each crash.
SMALL = ["--clients", "2", "--rows-per-client", "2", "--rounds", "3", "--reads", "4", "--timeout", "5"]
ROW_ROUNDS = 2 * 2 * 3
READS = 4


class FakeCookbook:
    """The cookbook's JSON API over an in-memory table.

    fault: None (correct), "stale" (reads return the value the row was
    created with, like a cache nobody expires), "leaky" (a crashed write is
    kept), "lossy" (a crash also undoes the last acknowledged write), "flaky"
    (every 7th row read answers 503), "sticky" (deletes answer 500).
    `workers` are the worker ids its answers name, in turn.
    """

    def __init__(self, fault=None, workers=WORKERS):
        self.fault = fault
        self.workers = workers
        self.rows = {}
        self.created = {}
        self.lock = threading.Lock()
        self.requests = itertools.count()
        self.row_reads = itertools.count(1)

    def __call__(self, environ, start_response):
        method, path = environ["REQUEST_METHOD"], environ["PATH_INFO"]
        length = int(environ.get("CONTENT_LENGTH") or 0)
        payload = json.loads(environ["wsgi.input"].read(length) or b"null")
        status, body = self.route(method, path, payload)
        if body is not None:
            body["worker"] = self.workers[next(self.requests) % len(self.workers)]
        start_response(status, [("Content-Type", "application/json")])
        return [json.dumps(body).encode()]

    def route(self, method, path, payload):
        if path == "/api/stats":
            return "200 OK", {"open_scopes": 0}
        if method == "POST" and path == "/api/users":
            return self.create(payload)
        match = re.fullmatch(r"/api/users/(\d+)(/crash|/delete)?", path)
        if not match or int(match[1]) not in self.rows:
            return "404 Not Found", {"error": "not found"}
        user_id = int(match[1])
        if method == "GET":
            return self.read(user_id)
        if match[2] == "/delete":
            return self.delete(user_id)
        if match[2]:
            return self.crash(user_id, payload["fullname"])
        self.rows[user_id] = payload["fullname"]
        return "200 OK", self.user(user_id, self.rows[user_id])

    def create(self, payload):
        with self.lock:
            user_id = len(self.rows) + 1
            self.rows[user_id] = self.created[user_id] = payload["fullname"]
        return "201 Created", self.user(user_id, payload["fullname"])

    def read(self, user_id):
        if self.fault == "flaky" and next(self.row_reads) % 7 == 0:
            return "503 Service Unavailable", None
        if self.fault == "stale":
            return "200 OK", self.user(user_id, self.created[user_id])
        return "200 OK", self.user(user_id, self.rows[user_id])

    def delete(self, user_id):
        if self.fault == "sticky":
            return "500 Internal Server Error", None
        with self.lock:
            del self.rows[user_id]
        return "200 OK", {"deleted": user_id}

    def crash(self, user_id, fullname):
        if self.fault == "leaky":
            self.rows[user_id] = fullname
        if self.fault == "lossy":
            self.rows[user_id] = self.created[user_id]
        return "500 Internal Server Error", None

    def user(self, user_id, fullname):
        return {"id": user_id, "name": f"user{user_id}", "fullname": fullname}


class QuietHandler(WSGIRequestHandler):
    def log_message(self, *args):
        pass


class ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


@contextlib.contextmanager
def running(app):
    """Serve a WSGI app on a free 127.0.0.1 port; yield its base URL."""
    server = make_server("127.0.0.1", 0, app, ThreadingWSGIServer, QuietHandler)
    # A short poll interval: shutdown() waits for the loop to notice.
    thread = threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture
def serve_fake():
    """Yields a function: (fault, workers) -> base URL of a running FakeCookbook, kept as `.fake`."""
    with contextlib.ExitStack() as stack:
        def serve(fault=None, workers=WORKERS):
            serve.fake = FakeCookbook(fault, workers)
            return stack.enter_context(running(serve.fake))

        yield serve


def run_check(capsys, url, *options):
    """Run the checker; return its exit status and its --json summary."""
    status = check.main([url, *SMALL, "--json", *options])
    out = capsys.readouterr().out
    return status, json.loads(out.splitlines()[-1])


@pytest.mark.parametrize(
    "got, expected, crash_value, problem",
    [
        ("new", "new", None, None),
        ("old", "new", None, "stale_reads"),
        ("new", "new", "boom", None),
        ("boom", "new", "boom", "leaked_crash_writes"),
        ("old", "new", "boom", "lost_writes"),
    ],
)
def test_classify_read_table(got, expected, crash_value, problem):
    assert check.classify_read(got, expected, crash_value) == problem


def test_docstring_examples_hold():
    assert doctest.testmod(check).failed == 0


def test_correct_app_passes_with_exit_0(serve_fake, capsys):
    status, numbers = run_check(capsys, serve_fake(), "--crash-every", "1")
    assert status == check.EXIT_OK
    assert numbers["ok"] is True


def test_correct_app_every_write_answer_and_read_is_a_check(serve_fake, capsys):
    _, numbers = run_check(capsys, serve_fake(), "--crash-every", "1")
    assert numbers["checks"] == ROW_ROUNDS * (1 + READS + READS)
    assert numbers["crash_writes"] == ROW_ROUNDS


def test_correct_app_counts_no_problem_and_no_error(serve_fake, capsys):
    _, numbers = run_check(capsys, serve_fake(), "--crash-every", "1")
    problems = ("stale_reads", "leaked_crash_writes", "lost_writes", "http_errors")
    assert {name: numbers[name] for name in problems} == dict.fromkeys(problems, 0)


def test_every_worker_that_answered_is_counted(serve_fake, capsys):
    _, numbers = run_check(capsys, serve_fake())
    assert numbers["workers_seen"] == len(WORKERS)


def test_stale_app_every_read_after_a_write_is_stale(serve_fake, capsys):
    status, numbers = run_check(capsys, serve_fake("stale"), "--crash-every", "0")
    assert (status, numbers["stale_reads"]) == (check.EXIT_PROBLEMS, ROW_ROUNDS * READS)


def test_leaky_app_every_read_after_a_crash_is_a_leaked_write(serve_fake, capsys):
    status, numbers = run_check(capsys, serve_fake("leaky"), "--crash-every", "1")
    assert (status, numbers["leaked_crash_writes"], numbers["stale_reads"]) == (
        check.EXIT_PROBLEMS, ROW_ROUNDS * READS, 0,
    )


def test_lossy_app_every_read_after_a_crash_is_a_lost_write(serve_fake, capsys):
    status, numbers = run_check(capsys, serve_fake("lossy"), "--crash-every", "1")
    assert (status, numbers["lost_writes"], numbers["leaked_crash_writes"]) == (
        check.EXIT_PROBLEMS, ROW_ROUNDS * READS, 0,
    )


def test_crash_every_n_rounds(serve_fake, capsys):
    _, numbers = run_check(capsys, serve_fake(), "--crash-every", "2")
    assert numbers["crash_writes"] == 2 * 2 * 1


def test_http_errors_are_counted_but_do_not_fail_the_run(serve_fake, capsys):
    status, numbers = run_check(capsys, serve_fake("flaky"), "--crash-every", "0")
    row_reads = ROW_ROUNDS * READS
    assert (status, numbers["http_errors"], numbers["checks"]) == (
        check.EXIT_OK, row_reads // 7, ROW_ROUNDS + row_reads - row_reads // 7,
    )


def test_summary_table_names_every_count(serve_fake, capsys):
    check.main([serve_fake("stale"), *SMALL])
    out = capsys.readouterr().out
    for label in ("checks made", "stale reads", "crash writes", "leaked crash writes",
                  "lost writes", "HTTP errors", "workers seen", "duration"):
        assert label in out
    assert "result: FAILED" in out and "e.g. stale read: row" in out


def test_progress_without_a_tty_is_one_final_line(serve_fake, capsys):
    check.main([serve_fake(), *SMALL])
    err = capsys.readouterr().err
    assert "\r" not in err and err.count("\n") == 1 and f"{ROW_ROUNDS}/{ROW_ROUNDS} rounds" in err


def test_quiet_prints_nothing_on_stderr(serve_fake, capsys):
    check.main([serve_fake(), *SMALL, "--quiet"])
    assert capsys.readouterr().err == ""


def test_unreachable_target_exits_2_with_a_clear_message(capsys):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    status = check.main([f"http://127.0.0.1:{port}", "--quiet"])
    assert status == check.EXIT_UNUSABLE
    assert f"cannot reach http://127.0.0.1:{port}" in capsys.readouterr().err


def test_target_that_is_not_the_cookbook_exits_2(capsys):
    def not_cookbook(environ, start_response):
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"no"]

    with running(not_cookbook) as url:
        status = check.main([url, "--quiet"])
    assert status == check.EXIT_UNUSABLE
    assert "is this the txscope cookbook app?" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["ftp://x"], ["http://x", "--clients", "0"], ["http://x", "--crash-every", "-1"]])
def test_usage_errors_exit_2(argv):
    with pytest.raises(SystemExit) as exited:
        check.main(argv)
    assert exited.value.code == check.EXIT_UNUSABLE


def test_every_row_the_run_created_is_deleted_at_the_end(serve_fake, capsys):
    _, numbers = run_check(capsys, serve_fake())
    assert serve_fake.fake.created and serve_fake.fake.rows == {}
    assert numbers["rows_not_deleted"] == 0


def test_rows_that_could_not_be_deleted_are_named(serve_fake, capsys):
    check.main([serve_fake("sticky"), *SMALL])
    out = capsys.readouterr().out
    assert out.count("not deleted: row") == 4 and "delete answered 500" in out


def test_a_single_worker_is_a_warning_but_exits_0(serve_fake, capsys):
    status = check.main([serve_fake(workers=("101",)), *SMALL])
    captured = capsys.readouterr()
    assert status == check.EXIT_OK
    assert "warning: only 1 worker process answered" in captured.err
    assert "warning: only 1 worker process answered" in captured.out


def test_a_single_worker_fails_with_strict(serve_fake, capsys):
    assert check.main([serve_fake(workers=("101",)), *SMALL, "--strict"]) == check.EXIT_UNUSABLE
    assert "Serve the app with several processes" in capsys.readouterr().err


def test_two_workers_give_no_warning_even_with_strict(serve_fake, capsys):
    assert check.main([serve_fake(workers=("101", "102")), *SMALL, "--strict"]) == check.EXIT_OK
    assert "warning" not in capsys.readouterr().err


def test_help_lists_the_options_and_exits_0(capsys):
    with pytest.raises(SystemExit) as exited:
        check.main(["--help"])
    assert exited.value.code == 0
    assert "--crash-every" in capsys.readouterr().out


# -- several servers sharing one database -------------------------------------------


@pytest.fixture
def two_servers():
    """Two servers in front of one FakeCookbook (one database); yields (urls, fake, writes per server)."""
    fake = FakeCookbook()
    writes = [0, 0]

    def front(index):
        def app(environ, start_response):
            if environ["REQUEST_METHOD"] == "POST" and re.fullmatch(r"/api/users/\d+", environ["PATH_INFO"]):
                writes[index] += 1
            return fake(environ, start_response)
        return app

    with running(front(0)) as one, running(front(1)) as two:
        yield [one, two], fake, writes


def test_with_two_servers_writes_land_on_both_and_reads_cross_over(two_servers, capsys):
    urls, fake, writes = two_servers
    status, numbers = run_check(capsys, urls[0], urls[1], "--crash-every", "0")
    assert status == check.EXIT_OK
    assert numbers["servers"] == 2 and numbers["checks"] == ROW_ROUNDS * (1 + READS)
    # Each client takes the servers in turn: of the reads after a write, the
    # 1st and 3rd land on the other server; the write's own answer never does.
    assert numbers["cross_server_checks"] == ROW_ROUNDS * 2
    assert writes == [ROW_ROUNDS // 2, ROW_ROUNDS // 2]  # each client's writes take the servers in turn
    assert numbers["workers_seen"] == 2 * len(WORKERS)  # a worker id of each server counts apart
    assert fake.rows == {}


def test_with_two_servers_the_reads_after_a_crash_cross_over_too(two_servers, capsys):
    urls, _, _ = two_servers
    _, numbers = run_check(capsys, *urls, "--crash-every", "1")
    assert numbers["cross_server_checks"] == ROW_ROUNDS * 4


def test_with_two_servers_the_report_names_both_and_the_crossings(two_servers, capsys):
    urls, _, _ = two_servers
    check.main([*urls, *SMALL])
    out = capsys.readouterr().out
    assert out.startswith(f"txscope-check {urls[0]} {urls[1]}\n")
    assert "across servers" in out and "servers" in out


def test_one_server_reports_no_crossing_and_keeps_its_table(serve_fake, capsys):
    _, numbers = run_check(capsys, serve_fake())
    assert (numbers["servers"], numbers["cross_server_checks"]) == (1, 0)
    check.main([serve_fake(), *SMALL])
    assert "across servers" not in capsys.readouterr().out


def test_a_stale_server_among_two_is_caught_on_the_reads_that_cross(capsys):
    fresh = FakeCookbook()
    stale = FakeCookbook("stale")
    stale.rows, stale.created = fresh.rows, fresh.created  # one database, one stale cache
    with running(fresh) as one, running(stale) as two:
        status = check.main([one, two, *SMALL, "--crash-every", "0", "--json"])
    out = capsys.readouterr().out
    # Half the reads after each write land on the stale server.
    assert (status, json.loads(out.splitlines()[-1])["stale_reads"]) == (check.EXIT_PROBLEMS, ROW_ROUNDS * 2)
    assert f"of {two}: " in out  # the example names the server that read stale


def test_an_unreachable_second_server_exits_2_naming_it(serve_fake, capsys):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    status = check.main([serve_fake(), f"http://127.0.0.1:{port}", "--quiet"])
    assert status == check.EXIT_UNUSABLE
    assert f"cannot reach http://127.0.0.1:{port}" in capsys.readouterr().err
