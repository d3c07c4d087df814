import web

from db import *

urls = ("/", "Index")
app = web.application(urls, locals())
app.add_processor(load_sqlo)

CACHE_URL = "redis://localhost:6379/0?cache=0"


class Index:
    def GET(self):
        return ", ".join(u.name for u in User.select())
