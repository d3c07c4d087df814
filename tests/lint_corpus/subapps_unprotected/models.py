"""Modelled on widoyo/ffwsv2 models.py: a module-level connection and hub."""
from sqlobject import *

cs = "mysql://root:@localhost/ffws?debug=0"
conn = connectionForURI(cs)
sqlhub.processConnection = conn  # expect: TXS102


class Agent(SQLObject):
    name = StringCol()

    def latest(self):
        return self._connection.queryAll("SELECT 1")
