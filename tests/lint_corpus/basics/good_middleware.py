"""The WSGI middleware wraps the app instead of a processor."""
import web

from models import User  # noqa: F401
from webpy_txscope import TxScopeMiddleware

app = web.application(("/", "Index"), globals())
application = app.wsgifunc()
application = TxScopeMiddleware(application, "sqlite:/:memory:")
