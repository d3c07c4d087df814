"""The recipe's module layout, with txscope: models and the processor in one
module that the application star-imports (the layout of the web.py cookbook's
SQLObject page, where app.py does `from models import *`)."""
from sqlobject import *

from webpy_txscope import txscope

load_sqlo = txscope("sqlite:/:memory:")


class User(SQLObject):
    name = StringCol()
