"""web.py's processor list, appended to directly (synthetic)."""
import web
from sqlobject import SQLObject, StringCol

from webpy_txscope import txscope


class Note(SQLObject):
    text = StringCol()


app = web.application(("/", "Index"), globals())
app.processors.append(txscope("sqlite:/:memory:"))

admin = web.application(("/", "Index"), globals())
admin.processors.insert(0, txscope("sqlite:/:memory:"))
