from sqlobject import SQLObject, StringCol


class User(SQLObject):
    username = StringCol()
