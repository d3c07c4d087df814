"""The application of tests/test_e2e_replicas.py: rows of numbers, read and written over HTTP.

``GET /rows/N`` reads row N (on a replica when the scope allows it), ``POST
/rows/N`` with a number as the body writes it (on the primary), ``GET
/stats`` answers this process's ``stats()`` as JSON.  Configured through the
daemon's environment: ``TXSCOPE_DATABASE_URI``, ``TXSCOPE_REPLICAS``
(comma-separated), ``TXSCOPE_CONSISTENCY``, ``TXSCOPE_REPLICA_WAIT``.
"""

import json
import os

import web
from sqlobject import sqlhub

from webpy_txscope import stats, txscope

urls = ("/rows/(\\d+)", "Row", "/stats", "Stats")


class Row:
    def GET(self, row_id):
        web.header("Content-Type", "text/plain")
        return str(sqlhub.threadConnection.queryOne(f"SELECT value FROM rows WHERE id = {int(row_id)}")[0])

    def POST(self, row_id):
        web.header("Content-Type", "text/plain")
        value = int(web.data())
        sqlhub.threadConnection.query(f"UPDATE rows SET value = {value} WHERE id = {int(row_id)}")
        return "ok"


class Stats:
    def GET(self):
        web.header("Content-Type", "application/json")
        return json.dumps(dict(stats(), worker=os.getpid()))


app = web.application(urls, globals())
app.add_processor(txscope(
    os.environ["TXSCOPE_DATABASE_URI"],
    replicas=[uri for uri in os.environ.get("TXSCOPE_REPLICAS", "").split(",") if uri],
    consistency=os.environ.get("TXSCOPE_CONSISTENCY", "session"),
    replica_wait=float(os.environ.get("TXSCOPE_REPLICA_WAIT", "0.5")),
))
application = app.wsgifunc()
