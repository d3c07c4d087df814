import web

from archive import Entry
from models import Page
from webpy_txscope import txscope

urls = ("/", "Index")
app = web.application(urls, globals())
app.add_processor(txscope("sqlite:/:memory:"))


class Index:
    def GET(self):
        return f"{Page.select().count()} {Entry.select().count()}"
