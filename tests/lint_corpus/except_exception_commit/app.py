"""A hand-written scope that commits on every exception (synthetic variant of
the recipe: web.py hands a processor a 500 HTTPError, an Exception, on a crash)."""
import web
from sqlobject import SQLObject, StringCol, connectionForURI, sqlhub

conn = connectionForURI("sqlite:/:memory:")


class Note(SQLObject):
    text = StringCol()


def scoped(handler):
    trans = conn.transaction()
    sqlhub.threadConnection = trans
    try:
        result = handler()
    except Exception:
        trans.commit(close=True)  # expect: TXS105
        raise
    except:  # noqa: E722
        trans.commit(close=True)  # expect: TXS105
        raise
    else:
        trans.commit(close=True)
        return result
    finally:
        del sqlhub.threadConnection


def scoped_status_aware(handler):
    trans = conn.transaction()
    sqlhub.threadConnection = trans
    try:
        result = handler()
    except Exception:
        # Only deliberate answers (3xx, 4xx) keep their writes.
        if web.ctx.status.startswith("5"):
            trans.rollback()
        else:
            trans.commit(close=True)
        raise
    trans.commit(close=True)
    return result


app = web.application(("/", "Index"), globals())
app.add_processor(scoped)
