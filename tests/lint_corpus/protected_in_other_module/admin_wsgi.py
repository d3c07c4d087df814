import blog.app as site

from webpy_txscope import TxScopeMiddleware

application = TxScopeMiddleware(site.admin.wsgifunc(), "sqlite:/:memory:")
