"""Models bound to one process-wide connection when first imported.

Modelled on Siceron/webTFEScheduler models.py.
"""
from sqlobject import *

sqlhub.processConnection = connectionForURI("sqlite:scheduler.db")  # expect: TXS102


class Thesis(SQLObject):
    code = StringCol()
    title = StringCol()
