"""What the WSGI server imports: it protects the application it serves."""
from blog.app import app
from webpy_txscope import txscope

app.add_processor(txscope("sqlite:/:memory:"))
application = app.wsgifunc()
