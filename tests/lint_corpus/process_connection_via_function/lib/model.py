from sqlobject import SQLObject, StringCol


class Recipe(SQLObject):
    title = StringCol()
