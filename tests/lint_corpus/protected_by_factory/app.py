import web
from sqlobject import SQLObject, StringCol

import scope
from handmade import transaction_processor
from scope import make_scope


class Note(SQLObject):
    text = StringCol()


app = web.application(("/", "Index"), globals())
app.add_processor(make_scope("sqlite:/:memory:"))

api = web.application(("/", "Index"), globals())
api.add_processor(scope.make_logged_scope("sqlite:/:memory:"))

legacy = web.application(("/", "Index"), globals())
legacy.add_processor(transaction_processor("sqlite:/:memory:"))
