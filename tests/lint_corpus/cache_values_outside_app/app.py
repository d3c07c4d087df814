import web

from blobs import StatsBlob  # noqa: F401
from models import Product  # noqa: F401
from webpy_txscope import txscope

app = web.application(("/", "Index"), globals())
app.add_processor(txscope("sqlite:/:memory:"))
