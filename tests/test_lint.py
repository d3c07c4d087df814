"""txscope-lint and its flake8 plugin.

The labelled corpus is ``tests/lint_corpus``: one directory per shape (most
modelled on a public project, named in the files), expected findings in
``manifest.json`` and marked in the files as ``# expect: CODE``.  Each test
below lints the cases of one rule and compares with their labels, so breaking
that rule fails that test; the last tests score the whole corpus.
"""
import re
import subprocess
import sys
from pathlib import Path

import pytest

from webpy_txscope.lint import check_path, check_source

REPO = Path(__file__).resolve().parent.parent
CORPUS = Path(__file__).parent / "lint_corpus"
sys.path.insert(0, str(CORPUS))
import measure  # noqa: E402  (the corpus's own scoring script)

OUTPUT_LINE = re.compile(
    r"^(?P<path>[^:]+\.py):(?P<line>\d+):(?P<col>\d+): (?P<code>TXS\d{3}) \S.*$")


def found(case):
    """Findings in a corpus case as {(path in the case, line, code)}."""
    root = CORPUS / case
    return {(path.relative_to(root).as_posix(), f.line, f.code)
            for path in measure.python_files(root) for f in check_path(path)}


def labelled(case):
    return {(path.removeprefix(f"{case}/"), line, code)
            for path, line, code in measure.manifest() if path.startswith(f"{case}/")}


def assert_case(case):
    assert found(case) == labelled(case)


def lint(*args):
    return subprocess.run([sys.executable, "-m", "webpy_txscope.lint", *map(str, args)],
                          cwd=REPO, capture_output=True, text=True)


def test_txs100_unparseable_file_is_reported_and_hides_nothing():
    # main.py and models.py are Python 2.  models.py is still known to use
    # SQLObject (from its text), so water_quality.py's application is still
    # reported; dam.py's is mounted by main.py, which carries the site.
    assert found("subapps_python2_parent") == {
        ("main.py", 12, "TXS100"), ("models.py", 11, "TXS100"),
        ("water_quality.py", 11, "TXS101")}
    assert_case("subapps_python2_parent")
    result = lint(CORPUS / "subapps_python2_parent")
    assert result.returncode == 1
    assert "main.py:12:5: TXS100 cannot parse this file (Python 2 code?)" in result.stdout
    assert "water_quality.py:11:21: TXS101 " in result.stdout


def test_txs100_null_bytes_and_undecodable_files_are_reported_too(tmp_path):
    (tmp_path / "nul.py").write_bytes(b"import web\x00\n")
    (tmp_path / "latin.py").write_bytes(b"# -*- coding: nowhere -*-\nx = 1\n")
    result = lint(tmp_path)
    assert result.returncode == 1
    assert sorted(OUTPUT_LINE.match(line)["code"] for line in result.stdout.splitlines()) == [
        "TXS100", "TXS100"]


def test_txs101_application_using_models_needs_the_scope():
    assert ("bad_txs101_no_processor.py", 14, "TXS101") in found("basics")
    # Processor by name, by direct call, imported from a sibling module, the
    # WSGI middleware: all quiet.
    assert_case("basics")


def test_txs101_bare_factory_is_not_a_processor():
    source = ("import web\nfrom webpy_txscope import txscope\n"
              "app = web.application((), {})\napp.add_processor(txscope)\n")
    assert [f.line for f in check_source(source) if f.code == "TXS101"] == [3]


def test_txs101_processors_append_and_insert_count():
    assert_case("protected_by_processors_append")
    assert found("protected_by_processors_append") == set()


def test_txs101_processor_built_by_a_factory_counts():
    assert_case("protected_by_factory")
    assert found("protected_by_factory") == set()


def test_txs101_processor_star_imported_from_the_models_module_counts():
    assert found("protected_by_star_import") == set()


def test_txs101_application_protected_in_another_module_counts():
    assert_case("protected_in_other_module")
    assert found("protected_in_other_module") == set()


def test_txs101_sub_application_of_a_protected_application_counts():
    assert_case("subapp_in_protected_app")
    assert found("subapp_in_protected_app") == set()


def test_txs101_sub_applications_are_judged_with_the_application_that_mounts_them():
    assert {f for f in found("subapps_unprotected") if f[2] == "TXS101"} == {
        ("main.py", 14, "TXS101")}
    assert_case("subapps_unprotected")


def test_txs101_application_built_by_a_function_with_a_plain_connection():
    # ICTV's shape: get_app() builds it, the processor binds a connection but
    # never opens a transaction; the models sit in a namespace package.
    assert ("ictv/app.py", 40, "TXS101") in found("app_factory_cache_off")
    assert_case("app_factory_cache_off")


def test_txs101_scope_added_only_when_run_as_a_script_does_not_count():
    # Built at import time, scoped under `if __name__ == "__main__":` only.
    assert found("protected_only_as_script") == {("app.py", 15, "TXS101")}
    # Built and scoped under the guard (webTFEScheduler's adminLTE.py): fine.
    assert not {f for f in found("recipe_processor") if f[2] == "TXS101"}


def test_txs101_hand_written_transaction_processor_counts_as_the_scope():
    assert not {f for f in found("recipe_processor") if f[2] == "TXS101"}
    assert_case("recipe_processor")


def test_txs101_not_in_tests():
    source = ("import web\nfrom sqlobject import SQLObject\n"
              "app = web.application((), {})\n")
    assert [f.code for f in check_source(source)] == ["TXS101"]
    test_file = REPO / "tests" / "test_processor.py"
    assert not [f for f in check_path(test_file) if f.code == "TXS101"]


def test_commit_rules_not_in_tests(tmp_path):
    # SQLObject's own tests: try/finally commit around their fixture data.
    test = tmp_path / "tests" / "test_joins.py"
    test.parent.mkdir()
    test.write_text("from sqlobject import sqlhub\n\ndef test_join():\n"
                    "    trans = sqlhub.processConnection.transaction()\n    try:\n"
                    "        assert trans\n    finally:\n        trans.commit(True)\n")
    assert check_path(test) == []
    script = test.parent.parent / "job.py"
    script.write_text(test.read_text())
    assert [f.code for f in check_path(script)] == ["TXS106"]


def test_txs102_import_time_process_connection():
    assert ("bad_txs102_process_connection.py", 8, "TXS102") in found("basics")
    assert_case("basics")


def test_txs102_followed_into_the_models_an_application_imports():
    # models.py is imported by the application: flagged.  anonymize.py does
    # the same, but it is a batch script no application imports.
    assert {f for f in found("recipe_processor") if f[2] == "TXS102"} == {
        ("models.py", 7, "TXS102")}
    assert_case("subapps_unprotected")


def test_txs102_set_by_a_function_called_at_import_time():
    # app.py calls it at import (two calls deep, in another package module);
    # manage.py only under `if __name__ == "__main__":` and in main().
    assert found("process_connection_via_function") == {("app.py", 9, "TXS102")}
    assert_case("process_connection_via_function")


def test_txs103_cache_values_false_in_an_applications_models():
    assert {f for f in found("basics") if f[2] == "TXS103"} == {
        ("bad_txs103_cache_values.py", 10, "TXS103"),
        ("bad_txs103_cache_values.py", 19, "TXS103")}


def test_txs103_not_in_library_tests_or_batch_scripts_or_for_big_values():
    # tests/cache_check.py builds an application, scripts/export.py is a cron
    # job, blobs.py's model holds megabyte values: only models.py is flagged.
    assert found("cache_values_outside_app") == {("models.py", 6, "TXS103")}
    assert_case("cache_values_outside_app")


def test_txs104_commit_on_http_error_is_the_published_recipe():
    assert ("bad_txs104_published_recipe.py", 24, "TXS104") in found("basics")
    assert_case("sqlalchemy_recipe")


def test_txs104_status_aware_handler_is_not_flagged():
    # The processor TXS104's own message recommends, and a type check.
    assert found("status_aware_handler") == set()


def test_txs104_http_error_that_is_not_web_pys_is_not_flagged():
    assert found("foreign_httperror") == {("feeds.py", 35, "TXS101")}
    assert_case("foreign_httperror")


def test_txs105_commit_on_any_exception():
    assert found("except_exception_commit") == {
        ("app.py", 19, "TXS105"), ("app.py", 22, "TXS105")}
    assert_case("except_exception_commit")


def test_txs106_commit_in_finally():
    assert found("commit_in_finally") == {("app.py", 20, "TXS106"), ("app.py", 35, "TXS106")}
    assert_case("commit_in_finally")


def test_txs106_not_after_a_catch_all_rollback_or_when_conditional():
    # The recipe's `finally:` commit follows a bare `except:` that rolled back.
    assert not {f for f in found("recipe_processor") if f[2] == "TXS106"}
    assert not {f for f in found("sqlalchemy_recipe") if f[2] == "TXS106"}
    # A `finally:` that only closes, and a conditional commit: quiet.
    assert found("webpy_sqlalchemy") == set()


def test_txs107_model_with_its_own_connection():
    assert found("own_connection") == {("models.py", 10, "TXS107"), ("archive.py", 3, "TXS107")}
    assert_case("own_connection")


def test_txs108_connection_cache_off_as_a_staleness_workaround():
    assert ("ictv/database.py", 23, "TXS108") in found("app_factory_cache_off")
    assert ("app.py", 5, "TXS108") in found("cache_param_uri")
    assert_case("cache_param_uri")


def test_txs108_not_for_a_url_that_is_not_a_database_connection():
    # app.py's redis:// URL carries cache=0 too.
    assert not {f for f in found("protected_by_star_import") if f[2] == "TXS108"}


@pytest.mark.parametrize("case", ["sqlobject_cgi", "sqlobject_flask",
                                  "webpy_psycopg_subapps", "webpy_sqlalchemy"])
def test_projects_without_web_py_and_sqlobject_together_are_clean(case):
    assert found(case) == set()


def test_manifest_labels_match_the_markers_in_the_files():
    assert measure.manifest() == measure.markers(), (
        "manifest.json and the # expect: markers disagree; after changing a case run "
        "python tests/lint_corpus/measure.py --write-manifest")


def test_synthetic_corpus_precision_and_recall_are_at_least_90_percent():
    score = measure.synthetic()
    assert score.precision >= 0.9 and score.recall >= 0.9, score.report("synthetic corpus")


def test_noqa_suppresses_the_named_code_only():
    path = CORPUS / "basics" / "noqa_suppressed.py"
    assert lint(path).returncode == 0
    source = path.read_text().replace("# noqa: TXS103", "# noqa: E501")
    assert [f.code for f in check_source(source, str(path))] == ["TXS103"]


def test_cli_output_format_and_exit_codes(tmp_path):
    bad = lint("tests/lint_corpus/basics/bad_txs103_cache_values.py")
    assert bad.returncode == 1
    lines = bad.stdout.splitlines()
    assert all(OUTPUT_LINE.match(line) for line in lines), lines
    # The path as given, the 1-based line and column, as flake8 prints them.
    assert lines[0].startswith("tests/lint_corpus/basics/bad_txs103_cache_values.py:10:9: TXS103 ")

    clean = lint(*sorted((CORPUS / "basics").glob("good_*.py")))
    assert (clean.returncode, clean.stdout, clean.stderr) == (0, "", "")

    missing = lint(tmp_path / "nowhere.py")
    assert missing.returncode == 2
    assert "nowhere.py" in missing.stderr

    broken = tmp_path / "broken.py"
    broken.write_text("import web\n\ndef handler(:\n    pass\n")
    unparsable = lint(broken)
    assert unparsable.returncode == 1
    assert unparsable.stdout.startswith(f"{broken}:3:13: TXS100 cannot parse this file: SyntaxError:")


def test_cli_recurses_into_directories_skipping_hidden_venvs_and_pycache(tmp_path):
    recipe = (CORPUS / "basics" / "bad_txs103_cache_values.py").read_text()
    for folder in (".hidden", "__pycache__", "venv", "pkg"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "models.py").write_text(recipe)
    (tmp_path / "venv" / "pyvenv.cfg").write_text("home = /usr/bin\n")
    result = lint(tmp_path)
    assert result.returncode == 1
    reported = {OUTPUT_LINE.match(line)["path"] for line in result.stdout.splitlines()}
    assert reported == {str(tmp_path / "pkg" / "models.py")}


def test_flake8_plugin_reports_what_the_cli_reports():
    fixture = CORPUS / "recipe_processor"
    flake8 = subprocess.run(
        [sys.executable, "-m", "flake8", "--isolated", "--select", "TXS", str(fixture)],
        cwd=REPO, capture_output=True, text=True)
    assert sorted(flake8.stdout.splitlines()) == sorted(lint(fixture).stdout.splitlines()), (
        "flake8 did not report the TXS codes; is the package installed "
        "(pip install -e .) so that its flake8.extension entry point exists?\n"
        + flake8.stdout + flake8.stderr)
    assert flake8.returncode == 1

    suppressed = subprocess.run(
        [sys.executable, "-m", "flake8", "--isolated", "--select", "TXS",
         str(CORPUS / "basics" / "noqa_suppressed.py")],
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
