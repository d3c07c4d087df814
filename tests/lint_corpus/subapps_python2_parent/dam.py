"""Mounted by main.py, which does not parse: main.py carries the (unchecked) site.

Modelled on widoyo/upb_migrate bendungan.py (app_bendungan).
"""
import web

from models import Agent

urls = ("$", "Index")
app_dam = web.application(urls, locals())


class Index:
    def GET(self):
        return ", ".join(a.name for a in Agent.select())
