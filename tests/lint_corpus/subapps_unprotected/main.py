"""The main application mounts the sub-applications and never scopes requests.

Modelled on widoyo/ffwsv2 main.py.
"""
import web

from adm import app_adm
from rain import app_rain

urls = (
    "/rain", app_rain,
    "/adm", app_adm,
)
app = web.application(urls, locals())  # expect: TXS101
application = app.wsgifunc()
