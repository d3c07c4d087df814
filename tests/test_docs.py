"""Every code block of README.org and cookbook/*.org runs as written, or is checked against the code.

The convention, on each block's first line (``#+begin_src LANG [ARGS]``):

- ``:tangle FILE``: the block is written to FILE, in a directory of its own
  per org file.  Once all of a file's blocks are written, every tangled
  ``.py``/``.wsgi`` file that is not a test runs as a script there (with the
  tangled files and the repository importable), then pytest runs the tangled
  ``test_*.py`` files.
- ``:txscope-doc serve``: a shell block that ends by serving the demo.  It
  runs in a fresh copy of the repository with ``TXSCOPE_PORT`` set to a free
  port, until the demo's first page answers there; then it is stopped.
- ``:txscope-doc check``: a block that cannot run in a test (it needs root,
  Apache, another machine, or is a fragment of an app).  It is checked
  instead: Python must compile (``>>>`` prompts removed) and every name it
  imports from this repository's modules must exist; a shell block must
  parse (``bash -n``), every repository file it names must exist, and every
  ``--option`` given to one of the repository's scripts must appear in that
  script; ``conf``/``ini`` must parse.
- anything else runs: Python as a script in an empty directory, a shell
  block with ``bash -e`` in a fresh copy of the repository.

A new block therefore runs unless it says otherwise.
"""

import configparser
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from orgblocks import blocks

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.org", *sorted((ROOT / "cookbook").glob("*.org"))]
LOCAL_MODULES = ("webpy_txscope", "app", "models")
ALL = [block for path in DOCS for block in blocks(path)]


def test_the_docs_have_blocks_of_every_kind():
    assert {block.mode for block in ALL} == {"run", "check", "serve", "tangle"}


def test_every_block_says_how_it_is_tested():
    unknown = [block.id for block in ALL if block.mode not in ("run", "check", "serve", "tangle")]
    assert unknown == []


# -- running ----------------------------------------------------------------------


def _env(**extra):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [extra.pop("PYTHONPATH", ""), str(ROOT)])))
    env["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), env.get("PATH", "")])
    for name in ("TXSCOPE_DATABASE_URI", "TXSCOPE_CSRF_SECRET", "TXSCOPE_DEMO_PEERS", "TXSCOPE_ENABLED"):
        env.pop(name, None)
    env.update(extra)
    return env


def repository_copy(destination):
    """The repository's files (tracked and new, not ignored), copied to *destination*."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=ROOT,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = ROOT / name
        if source.is_file():
            target = destination / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    return destination


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("block", [b for b in ALL if b.mode == "run"], ids=lambda b: b.id)
def test_block_runs(block, tmp_path):
    if block.language == "python" and block.text.lstrip().startswith(">>>"):  # a session: run as a doctest
        script = ("import doctest, sys\n"
                  f"test = doctest.DocTestParser().get_doctest({block.text!r}, {{}}, {block.id!r}, None, 0)\n"
                  "runner = doctest.DocTestRunner()\nrunner.run(test)\nsys.exit(bool(runner.failures))\n")
        command, cwd = [sys.executable, "-c", script], tmp_path
    elif block.language == "python":
        command, cwd = [sys.executable, "-c", block.text], tmp_path
    else:
        assert block.language == "sh", f"{block.id}: no way to run {block.language}; mark it check"
        command, cwd = ["bash", "-e", "-c", block.text], repository_copy(tmp_path / "repo")
    done = subprocess.run(command, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{block.id} failed:\n{done.stdout}\n{done.stderr}"


@pytest.mark.parametrize("block", [b for b in ALL if b.mode == "serve"], ids=lambda b: b.id)
def test_block_serves_the_demo(block, tmp_path):
    port = _free_port()
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        server = subprocess.Popen(["bash", "-e", "-c", block.text], cwd=repository_copy(tmp_path / "repo"),
                                  env=_env(TXSCOPE_PORT=str(port)), stdout=out, stderr=subprocess.STDOUT,
                                  start_new_session=True)
    try:
        deadline = time.monotonic() + 600  # it may install packages first
        while True:
            try:
                page = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5).read().decode()
                break
            except OSError:
                assert server.poll() is None, f"{block.id} stopped:\n{log.read_text()}"
                assert time.monotonic() < deadline, f"{block.id}: nothing on port {port}:\n{log.read_text()}"
                time.sleep(0.5)
        assert "One transaction per request" in page and page.count("<li>") == 10
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(20)


TANGLED = sorted({b.path for b in ALL if b.mode == "tangle"})


@pytest.mark.parametrize("path", TANGLED, ids=lambda p: str(p.relative_to(ROOT)))
def test_tangled_files_run_and_their_tests_pass(path, tmp_path):
    files = []
    for block in blocks(path):
        if block.mode == "tangle":
            target = tmp_path / block.args[":tangle"]
            target.write_text(block.text)
            files.append(target)
    env = _env(PYTHONPATH=str(tmp_path))
    for target in files:
        if target.suffix in (".py", ".wsgi") and not target.name.startswith(("test_", "conftest")):
            done = subprocess.run([sys.executable, "-c", f"import runpy; runpy.run_path({str(target)!r})"],
                                  cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
            assert done.returncode == 0, f"{path.name}: {target.name} failed:\n{done.stderr}"
    if any(target.name.startswith("test_") for target in files):
        done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
                              cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, f"{path.name}: its tests failed:\n{done.stdout}\n{done.stderr}"


# -- checking -------------------------------------------------------------------------


def python_source(text):
    """The code of a block, without the prompts of an interactive session."""
    if not re.search(r"^\s*>>>", text, re.MULTILINE):
        return text
    return "\n".join(line.strip()[4:] for line in text.splitlines() if line.strip()[:3] in (">>>", "..."))


def imported_names(source):
    """(module, name or None) for every import of one of the repository's own modules."""
    import ast

    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in LOCAL_MODULES:
            for alias in node.names:
                yield node.module, None if alias.name == "*" else alias.name
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in LOCAL_MODULES:
                    yield alias.name, None


REPO_FILE = re.compile(r"(?<![\w/.$-])((?:\.ci|cookbook|tests|bench|webpy_txscope)/[\w./-]*\w"
                       r"|[\w-]+\.(?:py|sh|wsgi|org))\b")


def check_shell(block):
    done = subprocess.run(["bash", "-n", "-c", block.text], capture_output=True, text=True)
    assert done.returncode == 0, f"{block.id} does not parse: {done.stderr}"
    for line in block.text.splitlines():
        command = line.split("#", 1)[0]
        for name in REPO_FILE.findall(command):
            assert (ROOT / name).exists(), f"{block.id} names {name}, which the repository does not have"
            if name.endswith(".py"):
                script = (ROOT / name).read_text()
                after = command.split(name, 1)[1].split("&&")[0]
                for option in re.findall(r"(?<!\S)(--[\w-]+)", after):
                    assert re.search(re.escape(option) + r"(?![\w-])", script), f"{block.id}: {name} has no {option}"


@pytest.mark.parametrize("block", [b for b in ALL if b.mode == "check"], ids=lambda b: b.id)
def test_block_matches_the_code(block, tmp_path):
    if block.language == "python":
        source = python_source(block.text)
        compile(source, block.id, "exec")
        script = "\n".join(
            [f"import importlib; m = importlib.import_module({module!r})"
             + (f"; assert hasattr(m, {name!r}), '{module} has no {name}'" if name else "")
             for module, name in imported_names(source)] or ["pass"])
        done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=_env(TXSCOPE_CSRF_SECRET="docs"),
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, f"{block.id}: {done.stderr.strip().splitlines()[-1]}"
    elif block.language == "sh":
        check_shell(block)
    elif block.language in ("conf", "ini"):
        configparser.ConfigParser(interpolation=None).read_string(block.text)
    else:
        pytest.fail(f"{block.id}: no check for {block.language}")
