"""A sub-application; the main application mounts it.

Modelled on widoyo/ffwsv2 curahhujan.py (app_ch).
"""
import web

from models import Agent

urls = ("$", "Index")
app_rain = web.application(urls, locals())


class Index:
    def GET(self):
        return ", ".join(a.name for a in Agent.select())
