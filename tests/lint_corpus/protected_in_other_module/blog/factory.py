"""An application factory: whoever calls it names (and protects) the application."""
import web

from blog.models import Post


def create_app():
    site = web.application(("/", "Index"), globals())
    return site


class Index:
    def GET(self):
        return str(Post.select().count())
