"""cacheValues = False to keep megabyte-sized values out of memory: not about
staleness.  Modelled on dago/opencsw csw/mgar/gar/v2/lib/python/models.py
(Srv4FileStatsBlob)."""
from sqlobject import BLOBCol, SQLObject, UnicodeCol


class StatsBlob(SQLObject):
    class sqlmeta:
        cacheValues = False

    md5_sum = UnicodeCol(notNone=True, unique=True, length=32)
    json = BLOBCol(notNone=True, length=2 ** 24)
