"""Models for the fixtures: a local models module, found next to the apps."""
from sqlobject import SQLObject, StringCol


class User(SQLObject):
    class sqlmeta:
        table = "users"

    name = StringCol()
