"""The cookbook app: users, served by web.py, one SQLObject transaction per request.

    python models.py          # create mydatabase.db with sample users
    python app.py [port]      # serve on http://127.0.0.1:8080/

Interactive use, exactly as in the recipe::

    >>> from app import *
    >>> load_sqlo()
    >>> list(User.select())

Configuration (environment): ``TXSCOPE_DATABASE_URI`` (default: SQLite file
``mydatabase.db`` in the working directory), ``TXSCOPE_CSRF_SECRET`` (the
same for every process; required with PostgreSQL or MariaDB, while on SQLite
it defaults to the file ``csrf_secret`` beside the database, created once),
and ``TXSCOPE_ENABLED=0`` to run without the processor, as the stale recipe did.
"""

import hashlib
import hmac
import json
import os
import re
import secrets
import sys

import web
from sqlobject import SQLObjectNotFound

from models import DATABASE_URI, User, hash_password
from webpy_txscope import current_scope, stats, txscope

urls = (
    "/", "index",
    "/users", "create",
    "/users/new", "new",
    "/users/(\\d+)", "show",
    "/users/(\\d+)/edit", "edit",
    "/users/(\\d+)/delete", "delete",
    "/users/(\\d+)/crash", "crash",
    "/api/users", "api_create",
    "/api/users/(\\d+)", "api_user",
    "/api/users/(\\d+)/crash", "api_crash",
    "/api/stats", "api_stats",
)

# One connection per process, one transaction per request.
load_sqlo = txscope(DATABASE_URI)

app = web.application(urls, globals())
if os.environ.get("TXSCOPE_ENABLED", "1") != "0":
    app.add_processor(load_sqlo)
else:
    load_sqlo()  # the process-wide cached connection: serves stale data
application = app.wsgifunc()

# -- input rules ---------------------------------------------------------------

NAME = re.compile(r"[A-Za-z0-9_.-]{1,40}\Z")
LIMITS = {"fullname": 200, "password": 200}


def _clean(fields, need_password):
    """Validated fields, or a 400 that says which one is wrong (nothing written)."""
    errors = []
    name = fields.get("name")
    if name is not None and not (isinstance(name, str) and NAME.match(name)):
        errors.append("name: 1 to 40 letters, digits, '_', '.' or '-'")
    fullname = fields.get("fullname")
    if not isinstance(fullname, str) or not fullname.strip() or len(fullname) > LIMITS["fullname"] \
            or not fullname.isprintable() or "\ufffd" in fullname:  # U+FFFD: the form was not UTF-8
        errors.append("fullname: 1 to 200 printable characters")
    password = fields.get("password")
    if need_password and not (isinstance(password, str) and 8 <= len(password) <= LIMITS["password"]):
        errors.append("password: 8 to 200 characters")
    if errors:
        raise bad_request("; ".join(errors))
    return fields


def fail(status, message):
    """A plain-text error response (raise it); the handler's own Content-Type is dropped."""
    web.ctx.headers = [h for h in web.ctx.headers if h[0].lower() != "content-type"]
    return web.HTTPError(status, {"Content-Type": "text/plain; charset=utf-8"}, message + "\n")


def bad_request(message):
    return fail("400 Bad Request", message)


def new_user(fields):
    """Create a user, or answer 400 if the name is taken (checked first: on
    PostgreSQL a failed INSERT would abort the whole transaction)."""
    if fields.get("name") is None:
        raise bad_request("name: required")
    if User.selectBy(name=fields["name"]).count():
        raise bad_request("name: already taken")
    return User(name=fields["name"], fullname=fields["fullname"], password=hash_password(fields["password"]))


def get_user(user_id):
    try:
        return User.get(int(user_id))
    except (SQLObjectNotFound, ValueError):
        raise fail("404 Not Found", "no such user")


# -- CSRF: a signed double-submit token --------------------------------------


def _csrf_secret():
    """The secret every process signs CSRF tokens with: configured, never per process."""
    secret = os.environ.get("TXSCOPE_CSRF_SECRET")
    if secret:
        return secret.encode("utf-8")
    if not DATABASE_URI.startswith("sqlite:"):
        raise RuntimeError("set TXSCOPE_CSRF_SECRET to the same random string for every process, "
                           "e.g. python -c 'import secrets; print(secrets.token_hex(32))'")
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
        raise fail("403 Forbidden", "missing or wrong CSRF token; reload the form")


def form_input():
    try:
        return web.input(_unicode=True)
    except (UnicodeDecodeError, ValueError):
        raise bad_request("malformed form data")


# -- HTML (Templetor escapes every $value) -------------------------------------

def render(text):
    """A Templetor template that HTML-escapes every ``$value`` (``$:value`` is raw)."""
    return web.template.Template(text, filter=web.websafe)


LAYOUT = """$def with (title, body)
<!doctype html><html><head><meta charset="utf-8"><title>$title</title></head>
<body><h1>$title</h1>
$:body
</body></html>
"""
INDEX = """$def with (users)
<p><a href="/users/new">New user</a></p>
<ul>
$for u in users:
    <li><a href="/users/$u.id">$u.name</a>: $u.fullname</li>
</ul>
"""
SHOW = """$def with (user, token)
<p>$user.fullname ($user.name)</p>
<p><a href="/users/$user.id/edit">Edit</a></p>
<form method="post" action="/users/$user.id/delete">
<input type="hidden" name="csrf_token" value="$token"><button>Delete</button></form>
<form method="post" action="/users/$user.id/crash">
<input type="hidden" name="csrf_token" value="$token">
<input name="fullname" value="written, then rolled back"><button>Write, then crash</button></form>
"""
FORM = """$def with (action, user, token)
<form method="post" action="$action">
<input type="hidden" name="csrf_token" value="$token">
$if user is None:
    <label>Name <input name="name" maxlength="40" required></label>
    <label>Password <input name="password" type="password" minlength="8" required></label>
<label>Full name <input name="fullname" maxlength="200" value="$(user.fullname if user else '')" required></label>
<button>Save</button></form>
"""
layout, index_t, show_t, form_t = (render(t) for t in (LAYOUT, INDEX, SHOW, FORM))


def page(title, body):
    web.header("Content-Type", "text/html; charset=utf-8", unique=True)
    return layout(title, body)


# -- HTML handlers ---------------------------------------------------------------


class index:
    def GET(self):
        return page("Users", index_t(list(User.select(orderBy="id"))))


class new:
    def GET(self):
        return page("New user", form_t("/users", None, csrf_token()))


class create:
    def POST(self):
        form = form_input()
        check_csrf(form)
        user = new_user(_clean(dict(form), need_password=True))
        raise web.seeother("/users/%d" % user.id)


class show:
    def GET(self, user_id):
        return page("User", show_t(get_user(user_id), csrf_token()))


class edit:
    def GET(self, user_id):
        user = get_user(user_id)
        return page("Edit user", form_t("/users/%d/edit" % user.id, user, csrf_token()))

    def POST(self, user_id):
        form = form_input()
        check_csrf(form)
        user = get_user(user_id)
        user.fullname = _clean(dict(form), need_password=False)["fullname"]
        raise web.seeother("/users/%d" % user.id)


class delete:
    def POST(self, user_id):
        check_csrf(form_input())
        get_user(user_id).destroySelf()
        raise web.seeother("/")


class crash:
    """Writes, then fails: the scope rolls the write back and the client gets a 500."""

    def POST(self, user_id):
        form = form_input()
        check_csrf(form)
        get_user(user_id).fullname = _clean(dict(form), need_password=False)["fullname"]
        raise RuntimeError("deliberate failure after a write")


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
        raise fail("415 Unsupported Media Type", "send application/json")
    raw = web.data()
    if len(raw) > max_bytes:
        raise bad_request("body larger than %d bytes" % max_bytes)
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise bad_request("malformed JSON")
    if not isinstance(body, dict):
        raise bad_request("expected a JSON object")
    return body


class api_create:
    def POST(self):
        return as_json(new_user(_clean(json_body(), need_password=True)), "201 Created")


class api_user:
    def GET(self, user_id):
        return as_json(get_user(user_id))

    def POST(self, user_id):
        fullname = _clean(json_body(), need_password=False)["fullname"]
        user = get_user(user_id)
        user.fullname = fullname
        return as_json(user)


class api_crash:
    def POST(self, user_id):
        fullname = _clean(json_body(), need_password=False)["fullname"]
        get_user(user_id).fullname = fullname
        raise RuntimeError("deliberate failure after a write")


class api_stats:
    def GET(self):
        figures = stats()
        figures["open_scopes"] -= current_scope() is not None  # not counting this request's own
        web.header("Content-Type", "application/json", unique=True)
        return json.dumps(dict(figures, worker=str(os.getpid())))


if __name__ == "__main__":
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 8080
    web.httpserver.runsimple(application, ("127.0.0.1", port))
