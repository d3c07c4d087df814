"""CGI scripts: a process per request, so a process connection is fine.

Modelled on kenrestivo/pacificacooop drupal/members/objects/model.py.
"""
from sqlobject import *

sqlhub.processConnection = connectionForURI("mysql://coop@localhost/coop")


class SessionInfo(SQLObject):
    class sqlmeta:
        idName = "session_id"
        cacheValues = False

    ip_addr = StringCol(length=20)
