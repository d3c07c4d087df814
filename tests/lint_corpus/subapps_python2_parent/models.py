"""Modelled on widoyo/upb_migrate models.py: Python 2, so it does not parse."""
from sqlobject import *

sqlhub.processConnection = connectionForURI("mysql://root:@localhost/upb")


class Agent(SQLObject):
    name = StringCol()

    def debug(self):
        print "agent", self.name  # expect: TXS100
