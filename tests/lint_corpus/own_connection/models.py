"""Models that bring their own connection, so the request's transaction never
reaches them (synthetic; the shape of TurboGears-era models that set
``_connection``)."""
from sqlobject import SQLObject, StringCol, connectionForURI, sqlhub

legacy = connectionForURI("sqlite:/:memory:")


class Page(SQLObject):
    _connection = legacy  # expect: TXS107
    title = StringCol()


class Tag(SQLObject):
    _connection = sqlhub  # a hub: resolved per thread, so the scope reaches it
    label = StringCol()
