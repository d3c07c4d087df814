"""txscope-lint and its flake8 plugin.

Each rule fires on its bad fixture exactly at the lines marked ``# expect:
CODE`` and stays quiet on every good fixture.  The fixtures live in
``tests/lint_fixtures``; ``models.py`` there is the local models module the
apps import, which is how TXS101 learns that they use SQLObject.
"""
import re
import subprocess
import sys
from pathlib import Path

from webpy_txscope.lint import check_source

FIXTURES = Path(__file__).parent / "lint_fixtures"
REPO = Path(__file__).resolve().parent.parent
GOOD = sorted(FIXTURES.glob("good_*.py")) + [FIXTURES / "models.py", FIXTURES / "dbscope.py"]
OUTPUT_LINE = re.compile(
    r"^(?P<path>[^:]+\.py):(?P<line>\d+):(?P<col>\d+): (?P<code>TXS\d{3}) \S.*$")


def found(path, code):
    """Lines where ``code`` is reported in ``path`` (noqa honoured)."""
    source = path.read_text()
    return [f.line for f in check_source(source, str(path)) if f.code == code]


def marked(path, code):
    """Lines of ``path`` carrying ``# expect: code``."""
    lines = path.read_text().splitlines()
    return [number for number, text in enumerate(lines, 1) if f"# expect: {code}" in text]


def fired_on_good(code):
    return {path.name: lines for path in GOOD if (lines := found(path, code))}


def lint(*args):
    return subprocess.run([sys.executable, "-m", "webpy_txscope.lint", *map(str, args)],
                          cwd=REPO, capture_output=True, text=True)


def test_txs101_application_using_models_needs_the_scope():
    bad = FIXTURES / "bad_txs101_no_processor.py"
    assert found(bad, "TXS101") == marked(bad, "TXS101") == [14]
    # Good: processor by name, by direct call, imported from a sibling
    # module, and the WSGI middleware.
    assert fired_on_good("TXS101") == {}


def test_txs101_bare_factory_is_not_a_processor():
    source = ("import web\nfrom webpy_txscope import txscope\n"
              "app = web.application((), {})\napp.add_processor(txscope)\n")
    assert [f.line for f in check_source(source) if f.code == "TXS101"] == [3]


def test_txs102_import_time_process_connection():
    bad = FIXTURES / "bad_txs102_process_connection.py"
    assert found(bad, "TXS102") == marked(bad, "TXS102") == [8]
    # Good: set inside a function and under `if __name__ == "__main__":`.
    assert fired_on_good("TXS102") == {}


def test_txs103_cache_values_false():
    bad = FIXTURES / "bad_txs103_cache_values.py"
    assert found(bad, "TXS103") == marked(bad, "TXS103") == [7, 16]
    assert fired_on_good("TXS103") == {}


def test_txs104_commit_on_http_error_is_the_published_recipe():
    bad = FIXTURES / "bad_txs104_published_recipe.py"
    assert found(bad, "TXS104") == marked(bad, "TXS104") == [20]
    # The recipe's hand-rolled processor is not txscope either.
    assert found(bad, "TXS101") == marked(bad, "TXS101") == [30]
    # Good: a processor that rolls back on HTTPError and commits in `else`.
    assert fired_on_good("TXS104") == {}


def test_noqa_suppresses_the_named_code_only():
    path = FIXTURES / "noqa_suppressed.py"
    assert lint(path).returncode == 0
    source = path.read_text().replace("# noqa: TXS103", "# noqa: E501")
    assert [f.code for f in check_source(source, str(path))] == ["TXS103"]


def test_cli_output_format_and_exit_codes(tmp_path):
    bad = lint("tests/lint_fixtures/bad_txs103_cache_values.py")
    assert bad.returncode == 1
    lines = bad.stdout.splitlines()
    assert all(OUTPUT_LINE.match(line) for line in lines), lines
    # The path as given, the 1-based line and column, as flake8 prints them.
    assert lines[0].startswith("tests/lint_fixtures/bad_txs103_cache_values.py:7:9: TXS103 ")

    clean = lint(*GOOD)
    assert (clean.returncode, clean.stdout, clean.stderr) == (0, "", "")

    missing = lint(tmp_path / "nowhere.py")
    assert missing.returncode == 2
    assert "nowhere.py" in missing.stderr

    broken = tmp_path / "broken.py"
    broken.write_text("import web\n\ndef handler(:\n    pass\n")
    unparsable = lint(broken)
    assert unparsable.returncode == 2
    assert f"{broken}:3:13: cannot parse: SyntaxError:" in unparsable.stderr


def test_cli_recurses_into_directories_skipping_hidden_venvs_and_pycache(tmp_path):
    recipe = (FIXTURES / "bad_txs103_cache_values.py").read_text()
    for folder in (".hidden", "__pycache__", "venv", "pkg"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "models.py").write_text(recipe)
    (tmp_path / "venv" / "pyvenv.cfg").write_text("home = /usr/bin\n")
    result = lint(tmp_path)
    assert result.returncode == 1
    reported = {OUTPUT_LINE.match(line)["path"] for line in result.stdout.splitlines()}
    assert reported == {str(tmp_path / "pkg" / "models.py")}


def test_flake8_plugin_reports_what_the_cli_reports():
    fixture = FIXTURES / "bad_txs104_published_recipe.py"
    flake8 = subprocess.run(
        [sys.executable, "-m", "flake8", "--isolated", "--select", "TXS", str(fixture)],
        cwd=REPO, capture_output=True, text=True)
    assert flake8.stdout.splitlines() == lint(fixture).stdout.splitlines(), (
        "flake8 did not report the TXS codes; is the package installed "
        "(pip install -e .) so that its flake8.extension entry point exists?\n"
        + flake8.stdout + flake8.stderr)
    assert flake8.returncode == 1

    suppressed = subprocess.run(
        [sys.executable, "-m", "flake8", "--isolated", "--select", "TXS",
         str(FIXTURES / "noqa_suppressed.py")],
        cwd=REPO, capture_output=True, text=True)
    assert (suppressed.returncode, suppressed.stdout) == (0, "")


def test_repository_cookbook_is_clean():
    app = REPO / "app.py"
    assert app.is_file(), (
        f"{app} is missing: the cookbook application (app.py, models.py, "
        "cookbook/*.py at the repository root) must exist and pass txscope-lint")
    paths = [app, *[p for p in [REPO / "models.py"] if p.is_file()],
             *sorted((REPO / "cookbook").glob("*.py"))]
    result = lint(*paths)
    assert result.returncode == 0, result.stdout + result.stderr
