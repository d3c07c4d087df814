"""The same small web.py application, served by each way of using SQLObject.

Every strategy answers the same four workloads:

* ``GET /items``        the read page: 50 rows x 3 columns, rendered by Templetor;
* ``GET /items/<id>``   one row by id;
* ``POST /items/<id>``  an update, then ``303 See Other``;
* ``GET /ping``         a request that never touches the database.

Strategies (see README.md for what each stands for):

``bare``        web.py without any database: the rows live in a Python list;
``unsafe``      ``sqlhub.processConnection`` with SQLObject's cache (stale reads);
``nocache``     the same, but ``sqlmeta.cacheValues = False`` (every attribute a query);
``recipe``      the published ``load_sqlo`` recipe, verbatim but for Python 3;
``middleware``  ``sqlobject.wsgi_middleware`` with ``use_transaction=True``;
``txscope``     this package's processor.

Each strategy gets a SQLObject connection of its own, so that one's cache
never serves another; ``prepare()`` puts ``sqlhub`` in the state that strategy
expects before a batch of its requests runs.
"""

from __future__ import annotations

import io
import os
import sys
from urllib.parse import urlsplit

import web
from sqlobject import IntCol, SQLObject, StringCol, connectionForURI, sqlhub
from sqlobject.dbconnection import dbConnectionForScheme

# As under mod_wsgi: no autoreloader statting every module on every request.
web.config.debug = False

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

STRATEGIES = ("bare", "unsafe", "nocache", "recipe", "middleware", "txscope")
WORKLOADS = ("read", "get", "write", "nodb")
ROWS = 50
TABLE = "bench_items"


class Item(SQLObject):
    class sqlmeta:
        table = TABLE

    name = StringCol(length=40)
    title = StringCol(length=200)
    stock = IntCol()


class UncachedItem(SQLObject):
    """The same table, with SQLObject's value cache turned off."""

    class sqlmeta:
        table = TABLE
        cacheValues = False  # noqa: TXS103 - one of the alternatives measured

    name = StringCol(length=40)
    title = StringCol(length=200)
    stock = IntCol()


class MemoryItem:
    """What the ``bare`` strategy renders: a plain object, no database."""

    __slots__ = ("id", "name", "title", "stock")

    def __init__(self, id, name, title, stock):
        self.id, self.name, self.title, self.stock = id, name, title, stock


def sample_row(i):
    return "item%02d" % i, "Item number %d, a thing of some description" % i, i * 7


def create_table(uri):
    """(Re)create the benchmark table with ROWS rows."""
    conn = private_connection(uri)
    Item.dropTable(ifExists=True, connection=conn)
    Item.createTable(connection=conn)
    for i in range(1, ROWS + 1):
        name, title, stock = sample_row(i)
        conn.query("INSERT INTO %s (id, name, title, stock) VALUES (%d, %s, %s, %d)"
                   % (TABLE, i, conn.sqlrepr(name), conn.sqlrepr(title), stock))
    conn.close()


def private_connection(uri):
    """A connection object nobody else holds (``connectionForURI`` shares one per URI)."""
    return dbConnectionForScheme(uri.split(":", 1)[0]).connectionFromURI(uri)


# -- the application ------------------------------------------------------------------

PAGE = web.template.Template("""$def with (items)
<!doctype html><html><head><meta charset="utf-8"><title>Items</title></head><body>
<table>
$for it in items:
    <tr><td><a href="/items/$it.id">$it.name</a></td><td>$it.title</td><td>$it.stock</td></tr>
</table>
</body></html>
""")
ONE = web.template.Template("""$def with (it)
<p>$it.name: $it.title ($it.stock)</p>
""")

URLS = (
    "/items", "items",
    "/items/(\\d+)", "item",
    "/ping", "ping",
)


class Store:
    """Where a strategy's handlers read and write rows."""

    def __init__(self, model):
        self.model = model

    def all(self):
        return list(self.model.select(orderBy="id"))

    def get(self, item_id):
        return self.model.get(item_id)

    def set_title(self, item_id, title):
        self.model.get(item_id).title = title


class MemoryStore(Store):
    def __init__(self):
        self.rows = [MemoryItem(i, *sample_row(i)) for i in range(1, ROWS + 1)]

    def all(self):
        return list(self.rows)

    def get(self, item_id):
        return self.rows[item_id - 1]

    def set_title(self, item_id, title):
        self.rows[item_id - 1].title = title


def make_webpy_app(store):
    def html(body):
        web.header("Content-Type", "text/html; charset=utf-8")
        return body

    class items:
        def GET(self):
            return html(PAGE(store.all()))

    class item:
        def GET(self, item_id):
            return html(ONE(store.get(int(item_id))))

        def POST(self, item_id):
            store.set_title(int(item_id), web.input(title="").title)
            raise web.seeother("/items/%s" % item_id)

    class ping:
        def GET(self):
            web.header("Content-Type", "text/plain")
            return "pong"

    # Each strategy adds its own processor (or none: the unsafe reference).
    return web.application(URLS, {"items": items, "item": item, "ping": ping})  # noqa: TXS101


# -- the published recipe, verbatim but for Python 3 --------------------------------------


def make_load_sqlo(uri):
    """``load_sqlo`` as published; only ``has_key`` became ``in`` and the URI a parameter."""

    def load_sqlo(handler=None):
        con = connectionForURI(uri)
        if 'env' not in web.ctx:  # not using web.py
            sqlhub.processConnection = con
            return
        trans = con.transaction()
        sqlhub.threadConnection = trans
        try:
            return handler()
        except web.HTTPError:
            trans.commit(close=True)  # noqa: TXS104 - the recipe as published
            raise
        except:  # noqa: E722 (verbatim)
            trans.rollback()
            trans.begin()
            raise
        finally:
            trans.commit(close=True)

    return load_sqlo


# -- one strategy -----------------------------------------------------------------------


class Strategy:
    """A WSGI callable for one strategy, and the hub state it runs with."""

    def __init__(self, name, uri):
        self.name = name
        self.uri = uri
        self.connection = None
        if name == "bare":
            app = make_webpy_app(MemoryStore())
        elif name in ("unsafe", "nocache"):
            self.connection = private_connection(uri)
            app = make_webpy_app(Store(UncachedItem if name == "nocache" else Item))
        elif name == "recipe":
            self.connection = connectionForURI(uri)
            app = make_webpy_app(Store(Item))
            app.add_processor(make_load_sqlo(uri))
        elif name == "middleware":
            from sqlobject.wsgi_middleware import make_middleware

            self.connection = private_connection(uri)
            app = make_webpy_app(Store(Item))
            self.wsgi = make_middleware(app.wsgifunc(), {}, database=self.connection, use_transaction=True)
        elif name == "txscope":
            from webpy_txscope import txscope

            self.connection = private_connection(uri)
            app = make_webpy_app(Store(Item))
            app.add_processor(txscope(self.connection))
        else:
            raise ValueError("unknown strategy %r" % name)
        self.app = app
        if name != "middleware":
            self.wsgi = app.wsgifunc()

    def prepare(self):
        """Put ``sqlhub`` in the state this strategy's deployment would have."""
        sqlhub.threadingLocal.__dict__.pop("connection", None)
        if self.name in ("unsafe", "nocache"):
            sqlhub.processConnection = self.connection
        else:
            sqlhub.__dict__.pop("processConnection", None)

    def close(self):
        if self.connection is not None:
            self.connection.close()


def environ(method, url, body=b""):
    """A WSGI environ for *method* *url* (with a form *body* for POST)."""
    parts = urlsplit(url)
    env = {
        "REQUEST_METHOD": method,
        "PATH_INFO": parts.path,
        "QUERY_STRING": parts.query,
        "SCRIPT_NAME": "",
        "SERVER_NAME": "localhost",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
        "HTTP_HOST": "localhost",
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(body),
        "wsgi.errors": sys.stderr,
        "wsgi.version": (1, 0),
        "wsgi.multithread": False,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
    }
    if body:
        env["CONTENT_TYPE"] = "application/x-www-form-urlencoded"
        env["CONTENT_LENGTH"] = str(len(body))
    return env


def call(wsgi, method, url, body=b""):
    """Run one request through *wsgi*; return (status, body bytes)."""
    seen = []
    chunks = wsgi(environ(method, url, body), lambda status, headers, exc_info=None: seen.append(status))
    try:
        data = b"".join(chunks)
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            close()
    return seen[0], data
