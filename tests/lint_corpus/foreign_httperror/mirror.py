"""A star import of urllib's errors: this HTTPError is not web.py's either."""
from urllib.error import *
from urllib.request import urlopen

from sqlobject import connectionForURI

conn = connectionForURI("sqlite:/:memory:")


def mirror(url):
    trans = conn.transaction()
    try:
        return urlopen(url).read()
    except HTTPError:
        trans.commit(close=True)
        return None
