from blog.factory import create_app
from webpy_txscope import txscope

site = create_app()
site.add_processor(txscope("sqlite:/:memory:"))
application = site.wsgifunc()
