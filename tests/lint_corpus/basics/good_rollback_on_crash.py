"""A hand-written processor that gets crashes right: roll back, never commit."""
import web
from sqlobject import connectionForURI, sqlhub


def scoped(handler):
    trans = connectionForURI("sqlite:/:memory:").transaction()
    sqlhub.threadConnection = trans
    try:
        result = handler()
    except web.HTTPError:
        trans.rollback()
        raise
    else:
        trans.commit(close=True)
        return result
    finally:
        del sqlhub.threadConnection
