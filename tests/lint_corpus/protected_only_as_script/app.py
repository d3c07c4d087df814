"""The scope is added only when the module runs as a script: a WSGI server
imports the module and serves the application without it (synthetic; the
development-server habit of web.py tutorials)."""
import web
from sqlobject import SQLObject, StringCol

from webpy_txscope import txscope


class Note(SQLObject):
    text = StringCol()


urls = ("/", "Index")
app = web.application(urls, globals())  # expect: TXS101
application = app.wsgifunc()

if __name__ == "__main__":
    app.add_processor(txscope("sqlite:/:memory:"))
    app.run()
