"""A factory returning a hand-written processor that opens a transaction."""
from sqlobject import connectionForURI, sqlhub


def transaction_processor(uri):
    connection = connectionForURI(uri)

    def processor(handler):
        trans = connection.transaction()
        sqlhub.threadConnection = trans
        try:
            result = handler()
        except Exception:
            trans.rollback()
            raise
        else:
            trans.commit(close=True)
            return result
        finally:
            del sqlhub.threadConnection
    return processor
