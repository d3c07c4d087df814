"""The mod_wsgi harness itself: many processes, env handed over, nothing left.

A tiny WSGI app reports its pid, its environment and what it can import; the
rules of the harness that the end-to-end tests rely on are pinned here.
"""

import json
import os
import sys
import textwrap
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from modwsgi import server_processes, serve, www_data_dir  # noqa: E402

APP = textwrap.dedent(
    """
    import json, os, sys, time
    import helper

    def application(environ, start_response):
        # Long enough that 24 concurrent requests need more than one process.
        time.sleep(0.05)
        body = json.dumps({
            "pid": os.getpid(),
            "uid": os.getuid(),
            "env": os.environ.get("TXSCOPE_PROBE"),
            "leaked": os.environ.get("TXSCOPE_HARNESS_LEAK"),
            "helper": helper.VALUE,
            "sys_path": sys.path,
            "wrote": open(os.environ["PROBE_FILE"], "a").write("x"),
        }).encode()
        start_response("200 OK", [("Content-Type", "application/json")])
        return [body]
    """
)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """One 3 x 4 server for the module, with a helper module on its path."""
    folder = tmp_path_factory.mktemp("app")
    (folder / "probe.wsgi").write_text(APP)
    lib = folder / "lib"
    lib.mkdir()
    (lib / "helper.py").write_text("VALUE = 'from python_path'\n")
    os.environ["TXSCOPE_HARNESS_LEAK"] = "the test process's own"
    try:
        with www_data_dir() as data:
            env = {"TXSCOPE_PROBE": "it's $here", "PROBE_FILE": str(data / "probe.txt")}
            with serve(folder / "probe.wsgi", env=env, python_path=[lib]) as server:
                yield SimpleNamespace(url=server.url, server=server, data=data)
    finally:
        del os.environ["TXSCOPE_HARNESS_LEAK"]


def fetch(url):
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.load(response)


def test_requests_spread_over_several_daemon_processes(served):
    with ThreadPoolExecutor(24) as pool:
        answers = list(pool.map(fetch, [served.url + "/"] * 96))
    assert len({answer["pid"] for answer in answers}) > 1


def test_daemons_run_as_www_data(served):
    assert fetch(served.url + "/")["uid"] == 33


def test_env_reaches_daemon_os_environ_verbatim(served):
    assert fetch(served.url + "/")["env"] == "it's $here"


def test_test_process_environment_does_not_leak(served):
    assert fetch(served.url + "/")["leaked"] is None


def test_python_path_folders_are_importable(served):
    assert fetch(served.url + "/")["helper"] == "from python_path"


def test_work_tree_package_comes_before_the_venv_copy(served):
    sys_path = fetch(served.url + "/")["sys_path"]
    package = next(i for i, entry in enumerate(sys_path) if entry.endswith("/code/site"))
    venv = next(i for i, entry in enumerate(sys_path) if entry.endswith("site-packages"))
    assert package < venv


def test_www_data_dir_is_writable_by_the_daemons(served):
    fetch(served.url + "/")
    assert (served.data / "probe.txt").read_text().startswith("x")


def test_error_log_is_exposed(served):
    assert "resuming normal operations" in served.server.log_text()


def test_no_process_is_left_after_stop(tmp_path):
    (tmp_path / "ok.wsgi").write_text(
        "def application(environ, start_response):\n"
        "    start_response('200 OK', [('Content-Type', 'text/plain')])\n"
        "    return [b'ok']\n"
    )
    with serve(tmp_path / "ok.wsgi", processes=2, threads=1) as server:
        assert len(server_processes(server.server_root)) >= 3
    assert server_processes(server.server_root) == []
