"""web.py with plain psycopg2 and mounted sub-applications; no SQLObject.

Modelled on BistuStorage/rookie code.py (Python 2 there; ported here).
"""
import web

from app import models, table

urls = (
    "/?", "app.search.search",
    "/table", table.app,
)
app = web.application(urls, globals())

if __name__ == "__main__":
    models.connect()
    app.run()
