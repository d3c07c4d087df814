"""The cookbook app: users, served by web.py, one SQLObject transaction per request.

    python models.py                      # create mydatabase.db with sample users
    python app.py [port]                  # serve on http://127.0.0.1:8080/
    python app.py --side-by-side [port]   # two servers on one database: port with
                                          # the scope, port + 1 without it

Interactive use, exactly as in the recipe::

    >>> from app import *
    >>> load_sqlo()
    >>> list(User.select())

Configuration (environment): ``TXSCOPE_DATABASE_URI`` (default: SQLite file
``mydatabase.db`` in the working directory), ``TXSCOPE_CSRF_SECRET`` (the
same for every process; required with PostgreSQL or MariaDB, while on SQLite
it defaults to the file ``csrf_secret`` beside the database, created once),
``TXSCOPE_CACHE`` (``local`` or a ``redis://`` URL: the shared cache, see
README.org), ``TXSCOPE_ENABLED=0`` to run without the processor, as the stale recipe did,
``TXSCOPE_PORT`` (default 8080, a command-line port wins),
``TXSCOPE_MAX_BODY`` (largest request body in bytes, default 65536; larger
ones get 413 unread), ``TXSCOPE_DEBUG=1`` for web.py's debug pages
(tracebacks with the app's globals: never in production) and
``TXSCOPE_DEMO_PEERS`` (``label=url,label=url``: the servers the stale-read
page compares; ``--side-by-side`` sets it).
"""

import hashlib
import hmac
import io
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

import web

# web.py turns debug on under `python app.py`, and its debug page lists the
# module's globals (the CSRF secret, the database URI) and every form field.
# It must be decided before web.application() is built.
web.config.debug = os.environ.get("TXSCOPE_DEBUG") == "1"

from sqlobject import SQLObjectNotFound  # noqa: E402

from models import DATABASE_URI, User, hash_password  # noqa: E402
from webpy_txscope import current_scope, stats, txscope  # noqa: E402

urls = (
    "/", "index",
    "/users", "create",
    "/users/new", "new",
    "/users/(\\d+)", "show",
    "/users/(\\d+)/edit", "edit",
    "/users/(\\d+)/delete", "delete",
    "/users/(\\d+)/crash", "crash",
    "/stale", "stale",
    "/api/users", "api_create",
    "/api/users/(\\d+)", "api_user",
    "/api/users/(\\d+)/delete", "api_delete",
    "/api/users/(\\d+)/crash", "api_crash",
    "/api/stats", "api_stats",
)

SCOPED = os.environ.get("TXSCOPE_ENABLED", "1") != "0"
MAX_BODY = int(os.environ.get("TXSCOPE_MAX_BODY") or 64 * 1024)
DEFAULT_PORT = 8080

# One connection per process, one transaction per request.
load_sqlo = txscope(DATABASE_URI, cache=os.environ.get("TXSCOPE_CACHE") or None)


class Problem(web.HTTPError):
    """An error answer (raise it): `error_pages` renders *message* as HTML or JSON."""

    def __init__(self, status, message, headers=None):
        self.message = message
        super().__init__(status, headers or {}, message)


def bad_request(message):
    return Problem("400 Bad Request", message)


def limit_body(handler):
    """Answer 413 to a body over MAX_BODY before anything reads it."""
    env = web.ctx.env
    length = str(env.get("CONTENT_LENGTH") or "")  # web.py's app.request() puts an int here
    if length:
        if not length.isdigit():
            raise bad_request("malformed Content-Length")
        if int(length) > MAX_BODY:
            raise too_large()
    elif env.get("HTTP_TRANSFER_ENCODING", "").lower() == "chunked":
        # No length to check: read one byte past the limit at most, and hand
        # what was read to web.py as if it had arrived with a length.
        body = env["wsgi.input"].read(MAX_BODY + 1)
        if len(body) > MAX_BODY:
            raise too_large()
        env["wsgi.input"], env["CONTENT_LENGTH"] = io.BytesIO(body), str(len(body))
        del env["HTTP_TRANSFER_ENCODING"]
    return handler()


def too_large():
    # The unread body is still on the connection: close it after the answer.
    return Problem("413 Request Entity Too Large", f"the request body is larger than {MAX_BODY} bytes",
                   {"Connection": "close"})


def error_pages(handler):
    """Every 4xx and 5xx in one shape: the site's layout, or JSON under /api/.

    The outermost processor: it sees an error after the scope has ended, so a
    crashed request's page can show that its write was rolled back.
    """
    try:
        return handler()
    except web.HTTPError as error:
        status = web.ctx.status
        if status[:1] not in "45" or (web.config.debug and status.startswith("500")):
            raise
        raise _error_answer(status, error) from None


DEFAULT_MESSAGES = {
    "404": "There is nothing at this address.",
    "405": "This address does not answer {method}.",
    # Not "nothing was kept": a connection lost during COMMIT may have kept it.
    "500": "The server failed while answering. Reload the page to see what was saved.",
    "503": "The database cannot be reached right now; nothing was written. Try again shortly.",
}


def _error_answer(status, error):
    if isinstance(error, Problem):
        message = error.message
    else:
        message = DEFAULT_MESSAGES.get(status[:3], status).format(method=web.ctx.method)
    web.ctx.headers = [h for h in web.ctx.headers if h[0].lower() != "content-type"]
    crash = web.ctx.get("crash")
    if web.ctx.path.startswith("/api/"):
        body = {"error": status, "message": message}
        if crash:
            body["kept"] = crash_outcome(crash)["kept"]
        return web.HTTPError(status, {"Content-Type": "application/json"}, json.dumps(body))
    if crash:
        body = crash_t(crash_outcome(crash))
    else:
        body = error_t(message)
    web.header("Content-Type", "text/html; charset=utf-8")
    title = "The request crashed" if crash else status[4:]
    return web.HTTPError(status, {}, str(layout(title, body, footer())))


app = web.application(urls, globals())
app.add_processor(error_pages)
app.add_processor(limit_body)
if SCOPED:
    app.add_processor(load_sqlo)
else:
    load_sqlo()  # the process-wide cached connection: serves stale data
application = app.wsgifunc()

# -- input rules ---------------------------------------------------------------

NAME = re.compile(r"[A-Za-z0-9_.-]{1,40}\Z")
LIMITS = {"fullname": 200, "password": 200}


def field_errors(fields, need_password):
    """{field: what is wrong with it}; empty when the fields may be written."""
    errors = {}
    name = fields.get("name")
    if need_password and name is None:
        errors["name"] = "required"
    elif name is not None and not (isinstance(name, str) and NAME.match(name)):
        errors["name"] = "1 to 40 letters, digits, '_', '.' or '-'"
    fullname = fields.get("fullname")
    if not isinstance(fullname, str) or not fullname.strip() or len(fullname) > LIMITS["fullname"] \
            or not fullname.isprintable() or "\ufffd" in fullname:  # U+FFFD: the form was not UTF-8
        errors["fullname"] = "1 to 200 printable characters"
    password = fields.get("password")
    if need_password and not (isinstance(password, str) and 8 <= len(password) <= LIMITS["password"]):
        errors["password"] = "8 to 200 characters"
    # Checked before the INSERT: on PostgreSQL a failed INSERT would abort the whole transaction.
    if need_password and "name" not in errors and User.selectBy(name=name).count():
        errors["name"] = "already taken"
    return errors


def as_problem(errors):
    return bad_request("; ".join(f"{field}: {why}" for field, why in errors.items()))


def new_user(fields):
    return User(name=fields["name"], fullname=fields["fullname"], password=hash_password(fields["password"]))


def get_user(user_id):
    try:
        return User.get(int(user_id))
    except (SQLObjectNotFound, ValueError):
        raise Problem("404 Not Found", "There is no such user (it may have been deleted).")


def database():
    """The pooled connection this request's scope uses (the process's one, without a scope)."""
    scope = current_scope()
    return scope.manager.connection if scope is not None else load_sqlo.connection


def fresh_fullname(user_id, connection):
    """The user's full name as the database has it now, read in a transaction of its own."""
    tx = connection.transaction()
    try:
        return User.get(user_id, connection=tx).fullname
    except SQLObjectNotFound:
        return None
    finally:
        tx.rollback()


def crash_outcome(crash):
    now = fresh_fullname(crash["id"], web.ctx.crash_connection)
    return dict(crash, now=now, kept=now == crash["attempted"] != crash["before"])


# -- CSRF: a signed double-submit token --------------------------------------


def _csrf_secret():
    """The secret every process signs CSRF tokens with: configured, never per process."""
    secret = os.environ.get("TXSCOPE_CSRF_SECRET")
    if secret:
        return secret.encode("utf-8")
    if not DATABASE_URI.startswith("sqlite:"):
        raise RuntimeError("set TXSCOPE_CSRF_SECRET to the same random string for every process, "
                           "e.g. python3 -c 'import secrets; print(secrets.token_hex(32))'")
    # Development on SQLite: one secret file beside the database, made once.
    path = os.path.join(os.path.dirname(load_sqlo.connection.filename), "csrf_secret")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    else:
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
    with open(path) as f:
        return f.read().strip().encode("utf-8")


CSRF_SECRET = _csrf_secret()


def csrf_token():
    """The token for this browser's forms (sets its nonce cookie on first use)."""
    nonce = web.cookies().get("csrf_nonce")
    if not nonce or not re.fullmatch(r"[0-9a-f]{32}", nonce):
        nonce = secrets.token_hex(16)
        web.setcookie("csrf_nonce", nonce, httponly=True, samesite="Strict")
    return hmac.new(CSRF_SECRET, nonce.encode(), hashlib.sha256).hexdigest()


def check_csrf(form):
    nonce = web.cookies().get("csrf_nonce") or ""
    expected = hmac.new(CSRF_SECRET, nonce.encode(), hashlib.sha256).hexdigest()
    if not nonce or not hmac.compare_digest(expected, str(form.get("csrf_token", ""))):
        raise Problem("403 Forbidden", "The form's security token is missing or out of date: "
                                       "go back, reload the form and send it again.")


def form_input():
    try:
        return web.input(_unicode=True)
    except (UnicodeDecodeError, ValueError):
        raise bad_request("The form data could not be read (it must be UTF-8).")


# -- what every page shows -------------------------------------------------------


def process_stats():
    """This process's stats(), not counting the scope of the request asking.

    With other scopes open, the oldest age may be this request's own (a few
    milliseconds), so it is never below the truth.
    """
    figures = stats()
    if current_scope() is not None:
        figures["open_scopes"] -= 1
        if figures["open_scopes"] == 0:
            figures["oldest_scope_age"] = 0.0
    return figures


def footer():
    return footer_t(os.getpid(), threading.current_thread().name, SCOPED, process_stats())


MESSAGES = {
    "created": "User created.",
    "saved": "Saved.",
    "deleted": "User deleted.",
}

# -- HTML (Templetor escapes every $value) -------------------------------------


def render(text):
    """A Templetor template that HTML-escapes every ``$value`` (``$:value`` is raw)."""
    return web.template.Template(text, filter=web.websafe)


LAYOUT = """$def with (title, body, footer, notice=None)
<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>$title · webpy_txscope demo</title>
<style>
body { font: 16px/1.45 system-ui, sans-serif; max-width: 46rem; margin: 0 auto; padding: 0 1rem; color: #222; }
nav { display: flex; gap: 1rem; padding: .8rem 0; border-bottom: 1px solid #ddd; }
h1 { font-size: 1.5rem; }
table { border-collapse: collapse; margin: 1rem 0; }
th, td { border: 1px solid #ccc; padding: .3rem .5rem; text-align: left; vertical-align: top; }
label { display: block; margin: .6rem 0; }
input { font: inherit; padding: .2rem; }
button { font: inherit; padding: .3rem .8rem; }
.notice { background: #e6f4e6; border: 1px solid #8c8; padding: .5rem; }
.error { color: #a00; }
.stale { background: #fde2e2; }
.fresh { background: #e6f4e6; }
footer { margin: 2rem 0; padding-top: .5rem; border-top: 1px solid #ddd; font-size: .85rem; color: #555; }
</style></head>
<body>
<nav><a href="/">Home</a> <a href="/users/new">New user</a> <a href="/stale">Stale reads, side by side</a>
<a href="/api/stats">Stats (JSON)</a></nav>
<main>
<h1>$title</h1>
$if notice:
    <p class="notice" role="status">$notice</p>
$:body
</main>
$:footer
</body></html>
"""
FOOTER = """$def with (pid, thread, scoped, figures)
<footer>Served by process <b id="pid">$pid</b>, thread <b>$thread</b>;
$if scoped:
    the scope is <b>on</b>.
$else:
    the scope is <b>off</b> (TXSCOPE_ENABLED=0): this server can serve stale rows.
This process's stats(): commits $figures['commits'], rollbacks $figures['rollbacks'],
failed commits $figures['failed_commits'], retries $figures['retries'],
untouched $figures['untouched'], open scopes $figures['open_scopes'] (not counting this request),
oldest open scope $("%.3f" % figures['oldest_scope_age']) s.</footer>
"""
INDEX = """$def with (users)
<p><b>webpy_txscope</b> gives each web.py request its own SQLObject transaction.
SQLObject caches rows per connection: with one connection per process, a row
another process changed stays old in this one until it restarts.  Inside a
per-request transaction every row is read fresh, and the request's writes are
committed or rolled back by these rules:</p>
<table>
<tr><th>The handler...</th><th>Transaction</th><th>Client gets</th></tr>
<tr><td>returns normally (status below 500)</td><td>commit</td><td>the response</td></tr>
<tr><td>raises a redirect (301, 302, 303, 307) or 304</td><td>commit</td><td>the redirect</td></tr>
<tr><td>raises web.notfound() or another 4xx HTTPError</td><td>commit</td><td>the 4xx</td></tr>
<tr><td>raises any other exception (web.py makes it a 500)</td><td>rollback</td><td>500</td></tr>
<tr><td>raises or returns with a 5xx status</td><td>rollback</td><td>the 5xx</td></tr>
<tr><td>returns, but COMMIT fails</td><td>rollback</td><td>500, never the 2xx/3xx</td></tr>
<tr><td>could not reach the database</td><td>rollback</td><td>503 with Retry-After</td></tr>
<tr><td>returns a generator: body exhausted</td><td>commit</td><td>the streamed body</td></tr>
<tr><td>returns a generator: body raises or is closed early</td><td>rollback</td><td>a truncated body</td></tr>
</table>
<p>Try it: open a user and press <i>Write, then crash</i> (the write is rolled
back), or watch two servers side by side on <a href="/stale">the stale-read page</a>.</p>
<h2>Users</h2>
<p><a href="/users/new">New user</a></p>
<ul id="users">
$for u in users:
    <li><a href="/users/$u.id">$u.name</a>: $u.fullname</li>
</ul>
"""
SHOW = """$def with (user, token)
<p>Full name: <b id="fullname">$user.fullname</b> (user name $user.name)</p>
<p><a href="/users/$user.id/edit">Edit</a> · <a href="/users/$user.id/delete">Delete</a>
· <a href="/stale?id=$user.id">Compare two servers</a></p>
<h2>Write, then crash</h2>
<p>This form sets the full name, then the handler raises an exception.  The
scope rolls the write back: the full name stays as it is.</p>
<form method="post" action="/users/$user.id/crash">
<input type="hidden" name="csrf_token" value="$token">
<label>Full name to write <input name="fullname" value="written, then rolled back" autocomplete="off"></label>
<button>Write, then crash</button></form>
"""
FORM = """$def with (action, values, errors, token, new_user)
$if errors:
    <p class="error" role="alert">Nothing was saved: please correct the fields marked below.</p>
<form method="post" action="$action" novalidate>
<input type="hidden" name="csrf_token" value="$token">
$if new_user:
    <label>User name <input name="name" maxlength="40" required autocomplete="username"
      value="$values.get('name', '')" aria-describedby="name-error"></label>
    $if 'name' in errors:
        <p class="error" id="name-error">User name: $errors['name']</p>
    <label>Password <input name="password" type="password" minlength="8" required
      autocomplete="new-password" aria-describedby="password-error"></label>
    $if 'password' in errors:
        <p class="error" id="password-error">Password: $errors['password']</p>
<label>Full name <input name="fullname" maxlength="200" required autocomplete="name"
  value="$values.get('fullname', '')" aria-describedby="fullname-error"></label>
$if 'fullname' in errors:
    <p class="error" id="fullname-error">Full name: $errors['fullname']</p>
<button>Save</button> <a href="$('/' if new_user else action.rsplit('/', 1)[0])">Cancel</a></form>
"""
CONFIRM = """$def with (user, token)
<p>Delete <b>$user.name</b> ($user.fullname)?  This cannot be undone.</p>
<form method="post" action="/users/$user.id/delete">
<input type="hidden" name="csrf_token" value="$token">
<button>Delete</button> <a href="/users/$user.id">Cancel</a></form>
"""
ERROR = """$def with (message)
<p id="message">$message</p>
<p><a href="/">Back to the users</a></p>
"""
CRASH = """$def with (crash)
$if crash['kept']:
    <p id="message" class="error">The request wrote <b>$crash['attempted']</b>, then crashed, and
    <b>the write was kept</b>: this server runs without the scope, so nothing rolled it back.
    The full name is now <b>$crash['now']</b>.</p>
$else:
    <p id="message">The request wrote <b>$crash['attempted']</b>, then crashed on purpose.
    <b>The write was rolled back</b>: the full name is still <b>$crash['now']</b>.</p>
<p><a href="/users/$crash['id']">Back to the user</a></p>
"""
STALE = """$def with (user, reads, truth, token, peers, here)
<p>Each server below was asked for user $user['name']'s full name just now.  The
database holds <b id="truth">$truth</b>.</p>
<table id="reads">
<tr><th>Server</th><th>Process</th><th>Full name it served</th><th></th></tr>
$for read in reads:
    <tr class="$read['verdict']"><td>$read['label']</td><td>$read['worker']</td><td>$read['fullname']</td>
    <td>$read['verdict']</td></tr>
</table>
$if not peers:
    <p>Only this server is listed.  Start two servers on one database, one with
    the scope and one without, with <code>python app.py --side-by-side</code>.</p>
$for label, base in (peers or [("this server", "")]):
    <form method="post" action="$base/stale">
    <input type="hidden" name="csrf_token" value="$token">
    <input type="hidden" name="id" value="$user['id']">
    <input type="hidden" name="back" value="$here">
    <label>New full name <input name="fullname" value="" required maxlength="200" autocomplete="off"></label>
    <button>Save through the server $label</button></form>
<p>Save a new name through either server, and this page reloads and asks every
server again.  The server without the scope keeps serving the name it cached
before; the one with the scope never does.</p>
"""
layout, footer_t, index_t, show_t, form_t, confirm_t, error_t, crash_t, stale_t = (
    render(t) for t in (LAYOUT, FOOTER, INDEX, SHOW, FORM, CONFIRM, ERROR, CRASH, STALE))


def page(title, body, status=None):
    if status:
        web.ctx.status = status
    web.header("Content-Type", "text/html; charset=utf-8", unique=True)
    notice = MESSAGES.get(web.input(_method="get").get("done", ""))
    return layout(title, body, footer(), notice)


def form_page(title, action, values, errors, new_user):
    """The form, its values kept (never the password) and each field's error beside it."""
    values = {k: v for k, v in values.items() if k in ("name", "fullname") and isinstance(v, str)}
    status = "400 Bad Request" if errors else None
    return page(title, form_t(action, values, errors, csrf_token(), new_user), status)


# -- HTML handlers ---------------------------------------------------------------


class index:
    def GET(self):
        return page("One transaction per request", index_t(list(User.select(orderBy="id"))))


class new:
    def GET(self):
        return form_page("New user", "/users", {}, {}, True)


class create:
    def POST(self):
        form = dict(form_input())
        check_csrf(form)
        errors = field_errors(form, need_password=True)
        if errors:  # answered, not raised: the form comes back filled in
            return form_page("New user", "/users", form, errors, True)
        raise web.seeother(f"/users/{new_user(form).id}?done=created")


class show:
    def GET(self, user_id):
        user = get_user(user_id)
        return page(f"User {user.name}", show_t(user, csrf_token()))


class edit:
    def GET(self, user_id):
        user = get_user(user_id)
        return form_page(f"Edit {user.name}", f"/users/{user.id}/edit", {"fullname": user.fullname}, {}, False)

    def POST(self, user_id):
        form = dict(form_input())
        check_csrf(form)
        user = get_user(user_id)
        errors = field_errors(form, need_password=False)
        if errors:
            return form_page(f"Edit {user.name}", f"/users/{user.id}/edit", form, errors, False)
        user.fullname = form["fullname"]
        raise web.seeother(f"/users/{user.id}?done=saved")


class delete:
    def GET(self, user_id):
        user = get_user(user_id)
        return page(f"Delete {user.name}?", confirm_t(user, csrf_token()))

    def POST(self, user_id):
        check_csrf(form_input())
        get_user(user_id).destroySelf()
        raise web.seeother("/?done=deleted")


def _crash_after_writing(user_id, fields):
    """Write the full name, then fail: with the scope on, the write is rolled back."""
    errors = field_errors(fields, need_password=False)
    if errors:
        raise as_problem(errors)
    user = get_user(user_id)
    web.ctx.crash = {"id": user.id, "before": user.fullname, "attempted": fields["fullname"]}
    web.ctx.crash_connection = database()  # error_pages reads the row back after the scope ended
    user.fullname = fields["fullname"]
    raise RuntimeError("deliberate failure after a write")


class crash:
    def POST(self, user_id):
        form = dict(form_input())
        check_csrf(form)
        _crash_after_writing(user_id, form)


# -- the stale-read page ----------------------------------------------------------


def peers():
    """(label, base URL) of each server the stale-read page compares."""
    listed = os.environ.get("TXSCOPE_DEMO_PEERS", "")
    return [tuple(item.split("=", 1)) for item in listed.split(",") if "=" in item]


def read_from(label, base, user_id, truth):
    try:
        with urllib.request.urlopen(f"{base}/api/users/{user_id}", timeout=5) as answer:
            body = json.load(answer)
    except (OSError, ValueError) as error:
        return {"label": label, "worker": "-", "fullname": f"(no answer: {error})", "verdict": "error"}
    verdict = "fresh" if body["fullname"] == truth else "stale"
    return {"label": label, "worker": body["worker"], "fullname": body["fullname"], "verdict": verdict}


class stale:
    def GET(self):
        # It reads the database in short transactions of its own, never through
        # the request's scope: no transaction stays open while the servers answer.
        chosen = web.input(_method="get", id="").id
        user_id = int(chosen) if chosen.isdigit() else None
        connection = database()
        tx = connection.transaction()
        try:
            if user_id is None:
                first = list(User.select(orderBy="id", limit=1, connection=tx))
                if not first:
                    raise Problem("404 Not Found", "There are no users yet: create one first.")
                user_id = first[0].id
            found = get_user_on(user_id, tx)
            user = {"id": found.id, "name": found.name}  # read now: the transaction ends below
        finally:
            tx.rollback()
        truth = fresh_fullname(user_id, connection)
        reads = [read_from(label, base, user_id, truth) for label, base in (peers() or [("this server", web.ctx.home)])]
        return page("Stale reads, side by side", stale_t(user, reads, truth, csrf_token(), peers(), web.ctx.home))

    def POST(self):
        form = dict(form_input())
        check_csrf(form)
        user = get_user(form.get("id", ""))
        errors = field_errors(form, need_password=False)
        if errors:
            raise as_problem(errors)
        user.fullname = form["fullname"]
        # Back to the page the form was on, which may be the other server's;
        # only a listed server, never an address taken from the form as is.
        back = form.get("back") if form.get("back") in {base for _, base in peers()} else ""
        raise web.seeother(f"{back}/stale?id={user.id}&done=saved")


def get_user_on(user_id, connection):
    try:
        return User.get(user_id, connection=connection)
    except SQLObjectNotFound:
        raise Problem("404 Not Found", "There is no such user (it may have been deleted).")


# -- JSON API (used by txscope-check) ------------------------------------------
# State-changing calls accept only application/json bodies: a cross-site HTML
# form cannot send that content type, so they need no CSRF token.


def as_json(user, status=None):
    if status:
        web.ctx.status = status
    web.header("Content-Type", "application/json", unique=True)
    return json.dumps({"id": user.id, "name": user.name, "fullname": user.fullname,
                       "worker": str(os.getpid())})


def json_body(max_bytes=4096):
    if web.ctx.env.get("CONTENT_TYPE", "").split(";")[0].strip() != "application/json":
        raise Problem("415 Unsupported Media Type", "send application/json")
    raw = web.data()
    if len(raw) > max_bytes:
        raise Problem("413 Request Entity Too Large", f"body larger than {max_bytes} bytes")
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise bad_request("malformed JSON")
    if not isinstance(body, dict):
        raise bad_request("expected a JSON object")
    return body


class api_create:
    def POST(self):
        fields = json_body()
        errors = field_errors(fields, need_password=True)
        if errors:
            raise as_problem(errors)
        return as_json(new_user(fields), "201 Created")


class api_user:
    def GET(self, user_id):
        return as_json(get_user(user_id))

    def POST(self, user_id):
        fields = json_body()
        errors = field_errors(fields, need_password=False)
        if errors:
            raise as_problem(errors)
        user = get_user(user_id)
        user.fullname = fields["fullname"]
        return as_json(user)


class api_delete:
    def POST(self, user_id):
        json_body()
        get_user(user_id).destroySelf()
        web.header("Content-Type", "application/json", unique=True)
        return json.dumps({"deleted": int(user_id), "worker": str(os.getpid())})


class api_crash:
    def POST(self, user_id):
        _crash_after_writing(user_id, json_body())


class api_stats:
    def GET(self):
        web.header("Content-Type", "application/json", unique=True)
        return json.dumps(dict(process_stats(), worker=str(os.getpid())))


# -- serving ---------------------------------------------------------------------


def serve(port):
    web.httpserver.runsimple(application, ("127.0.0.1", port))


def side_by_side(port):
    """Serve the app twice on one database: `port` with the scope, `port + 1` without."""
    servers = [("with the scope", port, "1"), ("without the scope", port + 1, "0")]
    listed = ",".join(f"{label}=http://127.0.0.1:{p}" for label, p, _ in servers)
    children = []
    for label, p, enabled in servers:
        env = dict(os.environ, TXSCOPE_ENABLED=enabled, TXSCOPE_DEMO_PEERS=listed)
        children.append(subprocess.Popen([sys.executable, os.path.abspath(__file__), str(p)], env=env))
        print(f"{label}: http://127.0.0.1:{p}/", flush=True)
    print(f"the stale-read page: http://127.0.0.1:{port}/stale  (Ctrl-C stops both)", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        # One server gone (its port taken, say) ends the demo: half of it shows nothing.
        while all(child.poll() is None for child in children):
            time.sleep(0.2)
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        for child in children:
            child.terminate()
        for child in children:
            child.wait(10)


def main(argv):
    pair = "--side-by-side" in argv
    rest = [a for a in argv if a != "--side-by-side"]
    port = int(rest[0]) if rest else int(os.environ.get("TXSCOPE_PORT") or DEFAULT_PORT)
    if pair:
        side_by_side(port)
    else:
        serve(port)


if __name__ == "__main__":
    main(sys.argv[1:])
