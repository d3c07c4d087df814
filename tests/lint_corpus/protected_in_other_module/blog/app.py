"""The application is built here and protected by the modules that serve it."""
import web

from blog.models import Post

urls = ("/", "Index")
app = web.application(urls, globals())
admin = web.application(urls, globals())


class Index:
    def GET(self):
        return ", ".join(p.title for p in Post.select())
