"""The models are used, but the application never opens a transaction."""
import web

from models import User

urls = ("/users", "Users")


class Users:
    def GET(self):
        return ", ".join(user.name for user in User.select())


app = web.application(urls, globals())  # expect: TXS101
app.add_processor(web.loadhook(lambda: None))
