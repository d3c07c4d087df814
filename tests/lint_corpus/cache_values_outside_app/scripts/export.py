"""A batch export, run by cron: its own process, fresh reads, no application."""
from sqlobject import SQLObject, StringCol, connectionForURI, sqlhub

sqlhub.processConnection = connectionForURI("sqlite:/:memory:?cache=0")


class Product(SQLObject):
    class sqlmeta:
        cacheValues = False
        table = "product"

    name = StringCol()


for product in Product.select():
    print(product.name)
