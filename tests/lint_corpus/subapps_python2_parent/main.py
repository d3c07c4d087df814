"""Modelled on widoyo/upb_migrate main.py: Python 2; mounts the sub-applications."""
import web

from dam import app_dam

urls = (
    '/dam', app_dam,
)
app = web.application(urls, locals())

if __name__ == '__main__':
    print "starting"  # expect: TXS100
    app.run()
