"""A sub-application nothing mounts; its models module does not parse but is
still known to use SQLObject.

Modelled on widoyo/upb_migrate kualitas_air.py (app_kualitas_air).
"""
import web

from models import Agent

urls = ("$", "Index")
app_water_quality = web.application(urls, locals())  # expect: TXS101


class Index:
    def GET(self):
        return str(Agent.select().count())
