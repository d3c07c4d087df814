"""The published web.py cookbook recipe, ported to Python 3.

Its processor opens a transaction per request, so the application counts as
scoped; its two commits are the bugs.
"""
import web
from sqlobject import connectionForURI, sqlhub

from models import User  # noqa: F401

urls = ("/", "Index")


def load_sqlo(handler=None):
    con = connectionForURI('sqlite:mydatabase.db')
    if 'env' not in web.ctx:  # not using web.py
        sqlhub.processConnection = con
        return
    trans = con.transaction()
    sqlhub.threadConnection = trans
    try:
        return handler()
    except web.HTTPError:
        trans.commit(close=True)  # expect: TXS104
        raise
    except:  # noqa: E722
        trans.rollback()
        trans.begin()
        raise
    finally:
        trans.commit(close=True)


app = web.application(urls, locals())
app.add_processor(load_sqlo)
