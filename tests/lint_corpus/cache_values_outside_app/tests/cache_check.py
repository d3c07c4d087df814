"""A library's own test: it builds an application around a model whose cache
is switched off on purpose (the shape of SQLObject's tests/test_cache.py)."""
import web
from sqlobject import SQLObject, StringCol, connectionForURI


class Counter(SQLObject):
    _connection = connectionForURI("sqlite:/:memory:?cache=0")

    class sqlmeta:
        cacheValues = False

    name = StringCol()


class Index:
    def GET(self):
        return Counter.get(1).name


app = web.application(("/", "Index"), globals())


def check_reads_are_fresh():
    Counter.createTable()
    assert app.request("/").data == Counter(name="a").name.encode()
