"""Small web.py applications built per test from plain functions."""

import web
from paste.fixture import TestApp


def make_app(handlers, *processors):
    """A web.py app routing each path of *handlers* to its function (GET and POST).

    A function receives the URL groups and returns the body (a str or a
    generator); it may raise anything a real handler raises.
    """
    urls, fvars = [], {}
    for i, (path, fn) in enumerate(handlers.items()):
        name = "handler%d" % i

        def method(self, *args, _fn=fn):
            web.header("Content-Type", "text/plain")
            return _fn(*args)

        fvars[name] = type(name, (), {"GET": method, "POST": method})
        urls += [path, name]
    app = web.application(tuple(urls), fvars)
    for processor in processors:
        app.add_processor(processor)
    return app


def paste_app(app):
    """``paste.fixture.TestApp`` around *app*: its lint checks WSGI compliance too."""
    return TestApp(app.wsgifunc())
