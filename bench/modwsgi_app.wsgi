"""The benchmark app under mod_wsgi: one strategy per server, chosen by the environment.

``BENCH_STRATEGY`` (unsafe, recipe, txscope, ...) and ``BENCH_URI`` come from
``bench/run.py``; ``strategies.py`` is on the python path.
"""

import os

from strategies import Strategy

_strategy = Strategy(os.environ["BENCH_STRATEGY"], os.environ["BENCH_URI"])


def application(environ, start_response):
    _strategy.prepare()
    return _strategy.wsgi(environ, start_response)
