"""The processor is bound in a sibling module and imported by name."""
from web import application

from dbscope import load_sqlo
from models import User  # noqa: F401

app = application(("/", "Index"), globals())
app.add_processor(load_sqlo)
