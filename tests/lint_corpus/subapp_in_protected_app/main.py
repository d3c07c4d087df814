import web

import wiki
from webpy_txscope import txscope

urls = ("/wiki", wiki.app)
app = web.application(urls, globals())
app.add_processor(txscope("sqlite:/:memory:"))
