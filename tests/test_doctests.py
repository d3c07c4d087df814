"""The examples in the package's docstrings are tests too: a reader can paste them."""

import doctest
import importlib
import pkgutil

import pytest

import webpy_txscope

MODULES = sorted(name for _, name, _ in pkgutil.iter_modules(webpy_txscope.__path__, "webpy_txscope."))


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    module = importlib.import_module(name)
    failures, _ = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert failures == 0


def test_the_package_docstring_example_runs():
    assert doctest.testmod(webpy_txscope).failed == 0
