from sqlobject import SQLObject, StringCol


class Post(SQLObject):
    title = StringCol()
