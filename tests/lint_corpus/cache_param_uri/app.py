"""Staleness "fixed" by a URI that turns the object cache off (synthetic)."""
import web
from sqlobject import SQLObject, StringCol, connectionForURI, sqlhub

URI = "postgres://app@localhost/app?cache=0"  # expect: TXS108
sqlhub.processConnection = connectionForURI(URI)  # expect: TXS102


class Item(SQLObject):
    name = StringCol()


app = web.application(("/", "Index"), globals())  # expect: TXS101
