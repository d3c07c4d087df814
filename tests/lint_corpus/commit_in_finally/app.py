"""Commits in `finally:` that no catch-all rollback precedes (synthetic variants
of the recipe's processor)."""
import web
from sqlobject import SQLObject, StringCol, connectionForURI, sqlhub

conn = connectionForURI("sqlite:/:memory:")


class Note(SQLObject):
    text = StringCol()


def scoped(handler):
    trans = conn.transaction()
    sqlhub.threadConnection = trans
    try:
        return handler()
    finally:
        trans.commit(close=True)  # expect: TXS106
        del sqlhub.threadConnection


def scoped_exceptions_only(handler):
    # KeyboardInterrupt and SystemExit pass through web.py's processors and
    # this handler: they reach `finally:` with the writes pending.
    trans = conn.transaction()
    sqlhub.threadConnection = trans
    try:
        return handler()
    except Exception:
        trans.rollback()
        raise
    finally:
        trans.commit(close=True)  # expect: TXS106


app = web.application(("/", "Index"), globals())
app.add_processor(scoped)
