"""txscope bound to a name, then added; processConnection only in scripts."""
import web
from sqlobject import connectionForURI, sqlhub

from models import User
from webpy_txscope import txscope

URI = "sqlite:/:memory:"
urls = ("/users", "Users")


class Users:
    def GET(self):
        return ", ".join(user.name for user in User.select())


def shell():
    """Interactive use outside a request: a plain connection is fine here."""
    sqlhub.processConnection = connectionForURI(URI)


load_sqlo = txscope(URI)
app = web.application(urls, globals())
app.add_processor(load_sqlo)

if __name__ == "__main__":
    sqlhub.processConnection = connectionForURI(URI)
    app.run()
