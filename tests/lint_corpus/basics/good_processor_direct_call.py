"""txscope called inline; web imported under another name."""
import web as w

from models import User  # noqa: F401
from webpy_txscope import txscope

app = w.application(("/", "Index"), globals())
app.add_processor(txscope("sqlite:/:memory:"))
