"""Bad input under load: a 4xx each, nothing written, nothing logged at error level, checker clean.

While txscope-check drives the cookbook under mod_wsgi (without crash writes,
whose tracebacks would be logged on purpose), other clients send malformed
forms and JSON, oversized fields, SQL-like strings, and unknown or
non-numeric ids to its HTML and JSON routes.
"""

import re
import secrets
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace
from urllib.parse import quote, urlencode

import pytest

from e2e_support import KINDS, call, checker, cookbook, error_lines, prepare, record
from modwsgi import www_data_dir

pytestmark = pytest.mark.e2e

ROUNDS = 4  # each bad request is sent this many times, from 6 clients at once
CHECK = ["--clients", "6", "--rows-per-client", "2", "--rounds", "30", "--reads", "3", "--crash-every", "0"]
SQL = ("x'; DROP TABLE users; --", "' OR '1'='1", "1; DELETE FROM users", "Robert'); UPDATE users SET fullname='p0wned")
GOOD = {"name": "okname", "fullname": "A Fine Name", "password": "long enough password"}
FORM = "application/x-www-form-urlencoded"


def no_token(body):
    return dict(body=body, content_type=FORM)


def bad_requests(user, unknown, form):
    """(label, method, path, options for `call`) of every bad request.

    `user` is an existing user (JSON), `unknown` an id nobody has, and
    `form(fields)` posts fields with a valid CSRF token.
    """
    api, html, victim = "/api/users", "/users", user["id"]
    big = "x" * 10_000
    requests = [
        ("json: form body", "POST", api, no_token(urlencode(GOOD).encode())),
        ("json: no content type", "POST", f"{api}/{victim}", dict(body=b'{"fullname": "x"}')),
        ("json: malformed", "POST", api, dict(body=b'{"name": "a", ', content_type="application/json")),
        ("json: a list", "POST", api, dict(body=b'["a", "b"]', content_type="application/json")),
        ("json: a string", "POST", f"{api}/{victim}", dict(body=b'"fullname"', content_type="application/json")),
        ("json: invalid UTF-8", "POST", api, dict(body=b'{"name": "\xff\xfe"}', content_type="application/json")),
        ("json: body over 4 KiB", "POST", api, dict(payload=dict(GOOD, fullname=big))),
        ("json: fullname of 201", "POST", api, dict(payload=dict(GOOD, fullname="y" * 201))),
        ("json: fullname empty", "POST", f"{api}/{victim}", dict(payload={"fullname": "   "})),
        ("json: fullname null", "POST", f"{api}/{victim}", dict(payload={"fullname": None})),
        ("json: fullname a list", "POST", f"{api}/{victim}", dict(payload={"fullname": ["a"]})),
        ("json: fullname with NUL", "POST", f"{api}/{victim}", dict(payload={"fullname": "a\x00b"})),
        ("json: update over 4 KiB", "POST", f"{api}/{victim}", dict(payload={"fullname": big})),
        ("json: name of 41", "POST", api, dict(payload=dict(GOOD, name="n" * 41))),
        ("json: name a number", "POST", api, dict(payload=dict(GOOD, name=42))),
        ("json: name an object", "POST", api, dict(payload=dict(GOOD, name={"$gt": ""}))),
        ("json: name missing", "POST", api, dict(payload={"fullname": "x", "password": GOOD["password"]})),
        ("json: password short", "POST", api, dict(payload=dict(GOOD, password="1234567"))),
        ("json: password missing", "POST", api, dict(payload={"name": "nopass", "fullname": "x"})),
        ("json: name taken", "POST", api, dict(payload=dict(GOOD, name=user["name"]))),
        ("json: update unknown id", "POST", f"{api}/{unknown}", dict(payload={"fullname": "x"})),
        ("json: crash malformed", "POST", f"{api}/{victim}/crash", dict(body=b"{", content_type="application/json")),
        ("json: crash unknown id", "POST", f"{api}/{unknown}/crash", dict(payload={"fullname": "x"})),
        ("json: read unknown id", "GET", f"{api}/{unknown}", {}),
        ("json: read id 0", "GET", f"{api}/0", {}),
        ("json: read 20-digit id", "GET", f"{api}/{'9' * 20}", {}),
        ("json: read non-numeric id", "GET", f"{api}/abc", {}),
        ("json: read negative id", "GET", f"{api}/-1", {}),
        ("json: PUT", "PUT", f"{api}/{victim}", dict(payload={"fullname": "x"})),
        ("json: DELETE", "DELETE", f"{api}/{victim}", {}),
        ("json: GET crash", "GET", f"{api}/{victim}/crash", {}),
        ("html: create without CSRF token", "POST", html, no_token(urlencode(GOOD).encode())),
        ("html: create with forged token", "POST", html, form(dict(GOOD, name="forged"), token="0" * 64)),
        ("html: create invalid UTF-8 name", "POST", html, form(None, raw=b"name=%ff%fe&fullname=x&password=12345678")),
        ("html: create multipart invalid UTF-8", "POST", html, form(None, multipart=[
            ("name", b"mpname"), ("fullname", b"\xff\xfe"), ("password", b"xxxxxxxxxx")])),
        ("html: create multipart truncated", "POST", html, form(None, multipart=[("name", b"cut")], end=b"")),
        ("html: create multipart without boundary", "POST", html, form(
            None, raw=b"--zz\r\nContent-Disposition: form-data\r\n", content_type="multipart/form-data; boundary=")),
        ("html: create fullname of 10000", "POST", html, form(dict(GOOD, name="bigname", fullname=big))),
        ("html: create password short", "POST", html, form(dict(GOOD, name="shortpw", password="short"))),
        ("html: create name taken", "POST", html, form(dict(GOOD, name=user["name"]))),
        ("html: edit fullname of 10000", "POST", f"{html}/{victim}/edit", form({"fullname": big})),
        ("html: edit fullname empty", "POST", f"{html}/{victim}/edit", form({"fullname": ""})),
        ("html: edit unknown id", "POST", f"{html}/{unknown}/edit", form({"fullname": "x"})),
        ("html: delete without CSRF token", "POST", f"{html}/{victim}/delete", no_token(b"")),
        ("html: delete unknown id", "POST", f"{html}/{unknown}/delete", form({})),
        ("html: crash without CSRF token", "POST", f"{html}/{victim}/crash", no_token(b"fullname=x")),
        ("html: show non-numeric id", "GET", f"{html}/abc", {}),
        ("html: show unknown id", "GET", f"{html}/{unknown}", {}),
        ("html: edit form of unknown id", "GET", f"{html}/{unknown}/edit", {}),
    ]
    for n, text in enumerate(SQL):
        requests += [
            (f"json: SQL-like name {n}", "POST", api, dict(payload=dict(GOOD, name=text))),
            (f"html: SQL-like name {n}", "POST", html, form(dict(GOOD, name=text))),
            (f"json: SQL-like id {n}", "GET", f"{api}/{quote(text)}", {}),
            (f"html: SQL-like id {n}", "GET", f"{html}/1{quote(text)}", {}),
        ]
    return requests


def html_session(url):
    """A browser's CSRF cookie and token, from the new-user form."""
    answer = call(url, "GET", "/users/new")
    assert answer.status == 200, answer
    cookie = answer.headers["set-cookie"].split(";")[0]
    token = re.search(rb'name="csrf_token" value="([0-9a-f]+)"', answer.body).group(1).decode()

    def form(fields, token=token, raw=None, multipart=None, end=b"--BND--\r\n", content_type=FORM):
        """A form post with the token; `raw` is a urlencoded tail, `multipart` (name, bytes) parts."""
        if multipart is not None:
            parts = [("csrf_token", token.encode()), *multipart]
            body = b"".join(b'--BND\r\nContent-Disposition: form-data; name="%s"\r\n\r\n%s\r\n' % (n.encode(), v)
                            for n, v in parts) + end
            content_type = "multipart/form-data; boundary=BND"
        elif raw is not None:
            body = f"csrf_token={token}&".encode() + raw
        else:
            body = urlencode(dict(fields, csrf_token=token)).encode()
        return dict(body=body, content_type=content_type, headers={"Cookie": cookie})

    return form


@pytest.fixture(scope="module", params=KINDS)
def bad_input(request):
    kind = request.param
    prefix = "bad" + secrets.token_hex(3)
    with www_data_dir() as data:
        database = prepare(kind, data)
        with cookbook(database) as app:
            user = app.create_users(1, prefix + "v")[0]
            unknown = max(database.users()) + 1_000_000
            requests = bad_requests(user, unknown, html_session(app.url)) * ROUNDS
            before = _not_the_checkers(database.users(), prefix)
            log_start = app.log_size()
            with ThreadPoolExecutor(1) as background, ThreadPoolExecutor(6) as clients:
                checking = background.submit(checker, app.url, "--prefix", prefix + "c", *CHECK)
                answers = list(clients.map(lambda r: (r[0], call(app.url, r[1], r[2], **r[3])), requests))
                checked = checking.result()
            log = app.log_since(log_start)
            after = _not_the_checkers(database.users(), prefix)
    statuses = Counter(str(answer.status) for _, answer in answers)
    record("bad_input", kind, {
        "bad_requests": len(answers), "distinct": len(answers) // ROUNDS, "statuses": dict(sorted(statuses.items())),
        "checker": {k: checked[k] for k in ("checks", "stale_reads", "leaked_crash_writes", "lost_writes",
                                            "http_errors")},
    })
    return SimpleNamespace(answers=answers, before=before, after=after, log=log, checked=checked)


def _not_the_checkers(users, prefix):
    return {i: row for i, row in users.items() if not row[0].startswith(prefix + "c")}


def test_every_bad_request_gets_a_4xx(bad_input):
    wrong = sorted({f"{label}: {answer}" for label, answer in bad_input.answers if not 400 <= answer.status < 500})
    assert wrong == []


def test_bad_requests_write_nothing(bad_input):
    assert bad_input.after == bad_input.before


def test_bad_requests_log_nothing_at_error_level(bad_input):
    assert error_lines(bad_input.log) == []


def test_the_checkers_counts_stay_clean_under_bad_input(bad_input):
    numbers = bad_input.checked
    assert numbers["ok"] is True, numbers["report"]
    assert numbers["http_errors"] == 0, numbers["report"]
