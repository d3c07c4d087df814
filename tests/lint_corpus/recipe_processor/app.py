"""The published web.py + SQLObject recipe as a processor.

Modelled on Siceron/webTFEScheduler adminLTE.py (load_sqlo).  The processor
opens a transaction per request, so the application counts as scoped; the
two commits are the recipe's bugs.
"""
import web
from sqlobject import connectionForURI, sqlhub

from models import Thesis

urls = ("/", "Index")


def load_sqlo(handler=None):
    con = connectionForURI("sqlite:scheduler.db")
    if "env" not in web.ctx:
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


class Index:
    def GET(self):
        return ", ".join(t.title for t in Thesis.select())


if __name__ == "__main__":
    app = web.application(urls, globals())
    app.add_processor(load_sqlo)
    app.run()
