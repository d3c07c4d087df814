import web

from models import Agent

urls = ("", "Index")
adm_rain = web.application(urls, locals())


class Index:
    def GET(self):
        return str(Agent.select().count())
