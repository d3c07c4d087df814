"""A library's own test: no application, the cache switched off to test reads
(the shape of SQLObject's tests/test_cache.py)."""
from sqlobject import SQLObject, StringCol, connectionForURI


class Counter(SQLObject):
    _connection = connectionForURI("sqlite:/:memory:")

    class sqlmeta:
        cacheValues = False

    name = StringCol()


def check_reads_are_fresh():
    Counter.createTable()
    assert Counter(name="a").name == "a"
