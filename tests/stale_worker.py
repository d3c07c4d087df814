"""One worker process of the cookbook app, driven line by line over stdin.

    GET <id>             -> prints the user's fullname as the app serves it
    SET <id> <fullname>  -> updates it through the app's JSON API

Several of these, each with its own cached connection, are the multi-process
deployment of the recipe in miniature.
"""

import json
import sys

import app

for line in sys.stdin:
    verb, user_id, *rest = line.split(maxsplit=2)
    if verb == "GET":
        response = app.app.request("/api/users/%s" % user_id)
    else:
        response = app.app.request("/api/users/%s" % user_id, method="POST",
                                   data=json.dumps({"fullname": rest[0].strip()}),
                                   headers={"Content-Type": "application/json"})
    body = response.data.decode()
    print(json.loads(body)["fullname"] if response.status.startswith("200") else response.status + " " + body,
          flush=True)
