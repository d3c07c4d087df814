"""The app has its scope, but still binds a process-wide connection on import."""
import web
from sqlobject import connectionForURI, sqlhub

from webpy_txscope import txscope

URI = "sqlite:/:memory:"
sqlhub.processConnection = connectionForURI(URI)  # expect: TXS102

app = web.application(("/", "Index"), globals())
app.add_processor(txscope(URI))
