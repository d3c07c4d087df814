"""The benchmark app of bench/sharedcache.py under mod_wsgi: one strategy per server.

``BENCH_STRATEGY`` is bare, unsafe, txscope, local or redis and ``BENCH_URI``
the database; local and redis get ``BENCH_CACHE`` (their ``cache=`` setting)
with a warm-up lease of ``BENCH_LEASE`` seconds, built exactly as in-process
(``sharedcache.Cached``).  ``GET /stats`` answers this daemon process's id and
its ``webpy_txscope.stats()``, so that the bench can tell the timed requests
were served from the cache.  ``strategies.py`` is on the python path.
"""

import json
import os

import strategies as S
from sharedcache import Cached

from webpy_txscope import SharedCache, stats

_name = os.environ["BENCH_STRATEGY"]
if os.environ.get("BENCH_CACHE"):
    _cache = SharedCache(os.environ["BENCH_CACHE"], lease=float(os.environ["BENCH_LEASE"]))
    _strategy = Cached(_name, os.environ["BENCH_URI"], _cache)
else:
    _strategy = S.Strategy(_name, os.environ["BENCH_URI"])


def application(environ, start_response):
    if environ["PATH_INFO"] == "/stats":
        body = json.dumps(dict(stats(), pid=os.getpid())).encode()
        start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        return [body]
    _strategy.prepare()
    return _strategy.wsgi(environ, start_response)
