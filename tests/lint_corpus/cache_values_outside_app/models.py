from sqlobject import SQLObject, StringCol


class Product(SQLObject):
    class sqlmeta:
        cacheValues = False  # expect: TXS103

    name = StringCol()
