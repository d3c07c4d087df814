"""A sub-application package that mounts its own sub-application.

Modelled on widoyo/ffwsv2 adm/__init__.py and adm/curahhujan.py.
"""
import web

from adm.rain import adm_rain

urls = ("/rain", adm_rain)
app_adm = web.application(urls, locals())
