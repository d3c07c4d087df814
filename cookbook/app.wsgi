"""mod_wsgi entry point for the cookbook app: ``application`` from app.py.

    mod_wsgi-express start-server cookbook/app.wsgi --processes 3 --threads 4
    # or Apache itself: see cookbook/apache.conf

Every daemon process imports app.py once; app.py builds the process's one
pooled SQLObject connection and adds the txscope processor, so each request
runs in a transaction of its own (``TXSCOPE_ENABLED=0`` turns that off).
Configure it through the daemon's environment: ``TXSCOPE_DATABASE_URI`` and,
for PostgreSQL or MariaDB, ``TXSCOPE_CSRF_SECRET`` (the same for every process).
"""

import os
import sys

# app.py and models.py sit one folder up in a checkout of the project.  The
# folder goes last, so a deployment that puts its own copy on the python-path
# (apache.conf, or mod_wsgi-express --python-path) imports that one instead.
sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from app import application  # noqa: E402,F401
