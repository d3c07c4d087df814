"""One uncached connection per thread instead of a transaction per request.

Modelled on UCL-INGI/ICTV ictv/database.py (before its Flask migration).
"""
import threading

from sqlobject import connectionForURI, sqlhub

database_path = "sqlite:/:memory:"


class ThreadConnection:
    _local = threading.local()

    @classmethod
    def get_conn(cls):
        if "conn" not in cls._local.__dict__:
            cls._local.conn = create_connection()
        return cls._local.conn


def create_connection():
    return connectionForURI(database_path, cache=False)  # expect: TXS108


def setup_database():
    sqlhub.processConnection = create_connection()
