"""A background client: its HTTPError is urllib's, not web.py's.

Modelled on UCL-INGI/ICTV ictv/client/cache_daemon.py (update_url).
"""
import logging
from urllib.error import HTTPError
from urllib.request import urlopen

from ictv.database import ThreadConnection


def fetch(url):
    conn = ThreadConnection.get_conn()
    trans = conn.transaction()
    try:
        body = urlopen(url).read()
    except HTTPError:
        logging.warning("could not fetch %s", url)
        trans.commit()
        return None
    trans.commit()
    return body
