"""The process connection is set by a helper, called when the module is imported
(the web.py variant of kathymurdochhomepage's setup(dburi))."""
import web

from lib import model_setup
from webpy_txscope import txscope

URI = "sqlite:/:memory:"
model_setup.connect(URI)  # expect: TXS102

app = web.application(("/", "Index"), globals())
app.add_processor(txscope(URI))
