"""HTTPError from urllib and requests is not web.py's: a failed fetch is not a
crashed request (synthetic, the shape of ICTV's client fetcher)."""
import urllib.error

import requests
import web
from sqlobject import SQLObject, StringCol, connectionForURI
from urllib.error import HTTPError

conn = connectionForURI("sqlite:/:memory:")


class Feed(SQLObject):
    url = StringCol()
    failures = StringCol(default="")


def refresh(feed):
    trans = conn.transaction()
    try:
        requests.get(feed.url).raise_for_status()
    except requests.HTTPError:
        feed.set(failures=feed.failures + "x", connection=trans)
        trans.commit(close=True)
    except HTTPError:
        trans.commit(close=True)
    except urllib.error.HTTPError:
        trans.commit(close=True)


def index(handler):
    return handler()


app = web.application(("/", "Index"), globals())  # expect: TXS101
app.add_processor(index)
