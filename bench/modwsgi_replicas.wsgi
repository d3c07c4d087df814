"""The read page of bench/replicas.py under mod_wsgi: ``BENCH_CONFIG`` is primary, session-new or strong.

``BENCH_URI`` is the primary, ``BENCH_REPLICAS`` the replicas (comma-separated);
``strategies.py`` is on the python path.
"""

import os

import strategies as S
from webpy_txscope import txscope

_config = os.environ["BENCH_CONFIG"]
_options = {}
if _config != "primary":
    _options = dict(replicas=os.environ["BENCH_REPLICAS"].split(","),
                    consistency="strong" if _config == "strong" else "session")
_app = S.make_webpy_app(S.Store(S.Item))
_app.add_processor(txscope(os.environ["BENCH_URI"], **_options))
application = _app.wsgifunc()
