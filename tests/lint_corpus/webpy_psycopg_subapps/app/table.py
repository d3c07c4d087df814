import web

from app import history, models  # noqa: F401

urls = ("/create", "Create")
app = web.application(urls, locals())


class Create:
    def POST(self):
        return str(models.insert("t", (web.input().value,)))
