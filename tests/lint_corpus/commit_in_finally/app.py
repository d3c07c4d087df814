"""Commits in `finally:` that no catch-all rollback precedes (synthetic variants
of the recipe's processor)."""
import web
from sqlobject import SQLObject, StringCol, connectionForURI, sqlhub
from sqlobject.dberrors import DatabaseError

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


def scoped_database_errors_only(handler):
    # Only database errors are rolled back: a crash elsewhere reaches the
    # processor as a 500 HTTPError and `finally:` commits its writes.
    trans = conn.transaction()
    sqlhub.threadConnection = trans
    try:
        return handler()
    except DatabaseError:
        trans.rollback()
        raise
    finally:
        trans.commit(close=True)  # expect: TXS106


def scoped_status_aware(handler):
    # Modelled on openstack-archive/fuel-web nailgun/test/base.py
    # (test_db_driver): every failure is rolled back first.
    trans = conn.transaction()
    sqlhub.threadConnection = trans
    try:
        return handler()
    except web.HTTPError:
        if web.ctx.status.startswith(("4", "5")):
            trans.rollback()
        raise
    except Exception:
        trans.rollback()
        raise
    finally:
        trans.commit(close=True)


app = web.application(("/", "Index"), globals())
app.add_processor(scoped)
