"""The package as a user gets it: `python -m build`, then the wheel alone in a clean virtual environment.

`python -m build` makes the sdist and then the wheel from that sdist, so a
file the wheel needs but the sdist lacks fails here.  The wheel goes into a
new virtual environment with only its ``[pytest]`` extra (pip's cache makes
that quick), where the cookbook demo is served from a folder holding only
app.py and models.py, and the pytest plugin's example from
cookbook/testing.org passes.
"""

import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from demo_server import free_port, serving, wait_for
from orgblocks import blocks

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def dist(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    done = subprocess.run([sys.executable, "-m", "build", "--outdir", str(out), str(ROOT)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (sdist,), (wheel,) = out.glob("*.tar.gz"), out.glob("*.whl")
    return sdist, wheel


@pytest.fixture(scope="module")
def venv(dist, tmp_path_factory):
    """A new virtual environment with the wheel and its [pytest] extra; its python."""
    folder = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", str(folder)], check=True, timeout=120)
    python = folder / "bin" / "python"
    done = subprocess.run([str(python), "-m", "pip", "install", "-q", f"{dist[1]}[pytest]"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return python


def test_the_wheel_holds_the_package_its_license_and_entry_points_only(dist):
    names = zipfile.ZipFile(dist[1]).namelist()
    top = {name.split("/")[0] for name in names}
    assert top == {"webpy_txscope", "webpy_txscope-1.0.0.dist-info"}
    assert {"webpy_txscope/__init__.py", "webpy_txscope/pytest_plugin.py", "webpy_txscope/check.py",
            "webpy_txscope/py.typed"} <= set(names)
    assert any(name.endswith("LICENSE") and ".dist-info/" in name for name in names)
    entry_points = zipfile.ZipFile(dist[1]).read("webpy_txscope-1.0.0.dist-info/entry_points.txt").decode()
    assert "txscope = webpy_txscope.pytest_plugin" in entry_points and "txscope-check" in entry_points


def test_the_wheel_metadata_has_license_author_and_a_light_pytest_extra(dist):
    metadata = zipfile.ZipFile(dist[1]).read("webpy_txscope-1.0.0.dist-info/METADATA").decode()
    assert re.search(r"^License: MIT$", metadata, re.MULTILINE)
    assert re.search(r"^Author: .+", metadata, re.MULTILINE)
    pytest_extra = re.findall(r"^Requires-Dist: ([^;\s]+).*extra == .pytest.", metadata, re.MULTILINE)
    assert sorted(pytest_extra) == ["Paste>=3.5", "pytest>=7"]


def test_the_sdist_holds_the_package_docs_and_demo_but_no_tests(dist):
    with tarfile.open(dist[0]) as sdist:
        names = {name.split("/", 1)[1] for name in sdist.getnames() if "/" in name}
    assert {"LICENSE", "README.org", "app.py", "models.py", "cookbook/recipe.org", "setup.cfg",
            "webpy_txscope/core.py", "webpy_txscope/py.typed"} <= names
    assert not [name for name in names if name.startswith(("tests/", "bench/", ".ci/"))]


def test_the_demo_runs_on_the_installed_wheel(venv, tmp_path):
    demo = tmp_path / "demo"
    demo.mkdir()
    for name in ("app.py", "models.py"):
        shutil.copy(ROOT / name, demo)
    where = subprocess.run([str(venv), "-c", "import webpy_txscope; print(webpy_txscope.__file__)"], cwd=demo,
                           capture_output=True, text=True, check=True).stdout
    assert str(venv.parent.parent) in where  # the wheel's copy, not the repository's
    port = free_port()
    with serving(demo, str(port), python=str(venv), root=str(demo)):
        page = wait_for(f"http://127.0.0.1:{port}/")
    assert "One transaction per request" in page and page.count("<li>") == 10


def test_the_pytest_plugin_example_passes_on_the_installed_wheel(venv, tmp_path):
    for block in blocks(ROOT / "cookbook" / "testing.org"):
        if ":tangle" in block.args:
            (tmp_path / block.args[":tangle"]).write_text(block.text)
    done = subprocess.run([str(venv), "-m", "pytest", "-q", "-p", "no:cacheprovider"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert re.search(r"\b3 passed\b", done.stdout)
