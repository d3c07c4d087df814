from sqlobject import SQLObject, StringCol, connectionForURI

__connection__ = connectionForURI("sqlite:/:memory:")  # expect: TXS107


class Entry(SQLObject):
    body = StringCol()
