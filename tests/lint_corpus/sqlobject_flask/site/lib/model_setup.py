from sqlobject import connectionForURI, sqlhub

from ..model import Recipe


def setup(dburi):
    connection = connectionForURI(dburi)
    sqlhub.processConnection = connection
    Recipe.createTable(ifNotExists=True)
    return connection
