"""Each finding here is acknowledged with a noqa comment on its line."""
import web
from sqlobject import SQLObject


class Page(SQLObject):
    class sqlmeta:
        cacheValues = False  # noqa: TXS103 (read-mostly table, measured)


app = web.application(("/", "Index"), globals())  # noqa: TXS101 (scoped in wsgi.py)
