"""A sub-application: it runs inside the parent's processors."""
import web
from sqlobject import SQLObject, StringCol


class Page(SQLObject):
    title = StringCol()


class Index:
    def GET(self):
        return ", ".join(p.title for p in Page.select())


app = web.application(("/", "Index"), locals())
