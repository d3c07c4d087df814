"""pytest plugin for apps that use txscope (registered through the ``pytest11`` entry point).

Fixtures: ``txscope_uri``, ``txscope_app`` (override it), ``txscope_testapp``.
"""

from __future__ import annotations

import os

import pytest

ENV_URI = "TXSCOPE_TEST_URI"


def pytest_addoption(parser):
    group = parser.getgroup("txscope", "webpy_txscope")
    group.addoption("--txscope-uri", default=None, metavar="URI",
                    help="database URI for the txscope_uri fixture (default: $%s, else SQLite in tmp_path)" % ENV_URI)


@pytest.fixture
def txscope_uri(request, tmp_path):
    """The database URI the app under test should use."""
    return (request.config.getoption("--txscope-uri") or os.environ.get(ENV_URI)
            or "sqlite:" + str(tmp_path / "txscope.db"))


@pytest.fixture
def txscope_app():
    """Your web.py application: override this fixture in your conftest.py."""
    pytest.fail("override the txscope_app fixture in your conftest.py to return your web.py application",
                pytrace=False)


@pytest.fixture
def txscope_testapp(txscope_app):
    """A ``paste.fixture.TestApp`` around ``txscope_app``."""
    from paste.fixture import TestApp

    return TestApp(txscope_app.wsgifunc())
