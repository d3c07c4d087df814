"""Staleness "fixed" by switching the cache off."""
from sqlobject import SQLObject, StringCol


class Note(SQLObject):
    class sqlmeta:
        cacheValues = False  # expect: TXS103

    text = StringCol()


class Tag(SQLObject):
    label = StringCol()


Tag.sqlmeta.cacheValues = False  # expect: TXS103
