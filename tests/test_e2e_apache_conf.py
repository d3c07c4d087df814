"""cookbook/apache.conf, as a user deploys it: plain Apache serving app.wsgi from a checkout.

The other end-to-end tests serve the cookbook through mod_wsgi-express; this
one runs Debian's own ``apache2`` with the example config (its paths pointed
at a copy of the checkout and at the test venv), so that the example and
app.wsgi's way of finding app.py stay right for users.  As for a user, the
daemons import webpy_txscope from the venv (python-path comes after
site-packages), which .ci/install-modwsgi.sh reinstalls from the work tree.
"""

import contextlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from e2e_support import CSRF_SECRET, PROCESSES, REPO, checker, prepare, record, wait_for
from modwsgi import INSTALL_HINT, VENV, _free_port, _mod_wsgi_express, _open_to_all, server_processes, www_data_dir

pytestmark = pytest.mark.e2e

APACHE = "/usr/sbin/apache2"
MODULES = Path("/usr/lib/apache2/modules")
EXAMPLE_ROOT = "/srv/webpy_txscope"
CHECK = ["--clients", "8", "--rows-per-client", "2", "--rounds", "8", "--reads", "4"]

HTTPD_CONF = """\
ServerRoot {root}
Listen 127.0.0.1:{port}
PidFile {root}/httpd.pid
ErrorLog {root}/error_log
LogLevel warn
DefaultRuntimeDir {root}
LoadModule mpm_event_module {modules}/mod_mpm_event.so
LoadModule authz_core_module {modules}/mod_authz_core.so
User www-data
Group www-data
WSGISocketPrefix {root}/wsgi
Include {root}/site.conf
"""


@contextlib.contextmanager
def checkout_copy():
    """The files a user's checkout has, where www-data can read them."""
    with tempfile.TemporaryDirectory(prefix="txscope-checkout-") as name:
        root = Path(name)
        for module in ("app.py", "models.py"):
            shutil.copy(REPO / module, root / module)
        (root / "cookbook").mkdir()
        shutil.copy(REPO / "cookbook" / "app.wsgi", root / "cookbook" / "app.wsgi")
        shutil.copytree(REPO / "webpy_txscope", root / "webpy_txscope",
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        _open_to_all(root)
        yield root


@contextlib.contextmanager
def apache(site_conf, env):
    """Run apache2 with `site_conf` on a free port; stop it and check that nothing is left."""
    _mod_wsgi_express()  # fails with the install hint when the venv is missing
    if not Path(APACHE).is_file():
        pytest.fail(f"{APACHE} not found: {INSTALL_HINT}", pytrace=False)
    with tempfile.TemporaryDirectory(prefix="txscope-apache-") as name:
        root = Path(name)
        root.chmod(0o755)
        port = _free_port()
        (root / "site.conf").write_text(site_conf.replace("*:80", f"127.0.0.1:{port}"))
        (root / "httpd.conf").write_text(HTTPD_CONF.format(root=root, port=port, modules=MODULES))
        run_env = {"PATH": os.environ["PATH"], "LANG": "C.UTF-8", **env}
        command = [APACHE, "-f", str(root / "httpd.conf"), "-k"]
        started = subprocess.run(command + ["start"], capture_output=True, text=True, env=run_env)
        log = root / "error_log"
        assert started.returncode == 0, started.stdout + started.stderr + (log.read_text() if log.exists() else "")
        try:
            yield f"http://127.0.0.1:{port}", log
        finally:
            subprocess.run(command + ["stop"], capture_output=True, env=run_env)
            wait_for(lambda: not server_processes(root), 15, "apache2 and its daemons to stop")


def test_the_example_apache_config_serves_the_cookbook_from_a_checkout():
    with www_data_dir() as data, checkout_copy() as checkout:
        database = prepare("sqlite", data)
        site = (REPO / "cookbook" / "apache.conf").read_text()
        site = site.replace(f"{EXAMPLE_ROOT}/venv", str(VENV)).replace(EXAMPLE_ROOT, str(checkout))
        env = {"TXSCOPE_DATABASE_URI": database.uri, "TXSCOPE_CSRF_SECRET": CSRF_SECRET}
        with apache(site, env) as (url, log):
            wait_for(lambda: _answers(url), 30, f"{url} to answer")
            numbers = checker(url, *CHECK)
            log_text = log.read_text()
    record("apache_conf", "sqlite", {k: numbers[k] for k in ("checks", "stale_reads", "leaked_crash_writes",
                                                             "lost_writes", "http_errors", "workers_seen")})
    assert numbers["ok"] and numbers["http_errors"] == 0, numbers["report"] + log_text
    assert numbers["workers_seen"] == PROCESSES, numbers["report"]


def _answers(url):
    from e2e_support import NoAnswer, call

    with contextlib.suppress(NoAnswer):
        return call(url, "GET", "/api/stats").status == 200
    return False
