"""Staleness "fixed" by switching the cache off, in an application's models."""
import web
from sqlobject import SQLObject, StringCol

from webpy_txscope import txscope


class Note(SQLObject):
    class sqlmeta:
        cacheValues = False  # expect: TXS103

    text = StringCol()


class Tag(SQLObject):
    label = StringCol()


Tag.sqlmeta.cacheValues = False  # expect: TXS103


app = web.application(("/", "Index"), globals())
app.add_processor(txscope("sqlite:/:memory:"))
