"""A catch-all rollback first: the commit in `finally:` then only finishes the
success path (SQLObject ignores a commit on a finished transaction).

Modelled on dago/opencsw csw/mgar/gar/v2/lib/web/releases_web.py (Transaction).
"""
from contextlib import contextmanager

from sqlobject import SQLObject, StringCol


class Release(SQLObject):
    name = StringCol()


@contextmanager
def transaction(cls):
    trans = cls._connection.transaction()
    try:
        yield trans
        trans.commit()
    except:  # noqa: E722
        trans.rollback()
        raise
    finally:
        trans.commit(close=True)
