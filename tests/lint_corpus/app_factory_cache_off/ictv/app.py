"""The application is built and returned by a function; its processors bind a
plain connection, not a transaction.

Modelled on UCL-INGI/ICTV ictv/app.py (get_app, get_request_errors_preprocessor).
"""
import logging

import web
from sqlobject import sqlhub
from sqlobject.dberrors import DatabaseError

from ictv.database import ThreadConnection
from ictv.models.user import User

urls = ("/", "Index")


class Index:
    def GET(self):
        return User.select().count()


def get_request_errors_preprocessor(logger):
    def request_errors_preprocessor(handler):
        sqlhub.threadConnection = ThreadConnection.get_conn()
        try:
            return handler()
        except web.HTTPError as e:
            # Looks at which error it is: a crash is logged, never committed.
            if type(e) is web.webapi._InternalError:
                logger.error("crash in %s", web.ctx.path)
            raise
        except DatabaseError:
            logger.error("database error in %s", web.ctx.path)
            raise
    return request_errors_preprocessor


def get_app(config):
    app = web.application(urls, globals())  # expect: TXS101
    app.config = config
    app.add_processor(web.loadhook(lambda: None))
    app.add_processor(get_request_errors_preprocessor(logging.getLogger("pages")))
    return app
