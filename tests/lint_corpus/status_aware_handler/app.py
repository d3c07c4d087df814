"""The hand-written processor txscope-lint's TXS104 message suggests: it looks at
the status before committing (synthetic)."""
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
    except web.HTTPError:
        # A redirect or a 404 keeps its writes; a crash (5xx) does not.
        if web.ctx.status.startswith("5"):
            trans.rollback()
        else:
            trans.commit(close=True)
        raise
    except BaseException:
        trans.rollback()
        raise
    trans.commit(close=True)
    return result


def scoped_by_type(handler):
    trans = conn.transaction()
    sqlhub.threadConnection = trans
    try:
        result = handler()
    except web.HTTPError as error:
        if isinstance(error, web.webapi._InternalError):
            trans.rollback()
            raise
        trans.commit(close=True)
        raise
    trans.commit(close=True)
    return result


app = web.application(("/", "Index"), globals())
app.add_processor(scoped)
