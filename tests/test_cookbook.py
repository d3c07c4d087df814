"""The cookbook app: its routes, its input rules, CSRF, escaping, and its two commands."""

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

os.environ.setdefault("TXSCOPE_CSRF_SECRET", "cookbook-test-secret")
import app as cookbook  # noqa: E402
from models import User, check_password  # noqa: E402
from webapps import paste_app  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def client(scope, monkeypatch):
    """The cookbook app, its processor pointed at the test database."""
    processors = [scope if p is cookbook.load_sqlo else p for p in cookbook.app.processors]
    if scope not in processors:
        processors.append(scope)
    monkeypatch.setattr(cookbook.app, "processors", processors)
    return paste_app(cookbook.app)


def token(client, path="/users/new"):
    page = client.get(path)
    return re.search(r'name="csrf_token" value="([0-9a-f]+)"', page.body.decode()).group(1)


def user_count(backend):
    return backend.count()


# -- pages ----------------------------------------------------------------------------------


def test_index_lists_users_and_escapes_them(client, backend):
    backend.sql("UPDATE users SET fullname = '<script>alert(1)</script>' WHERE id = 2")
    body = client.get("/").body.decode()
    assert "user1" in body and "user3" in body
    assert "<script>alert" not in body and "&lt;script&gt;alert(1)&lt;/script&gt;" in body


def test_show_unknown_and_non_numeric_ids_are_404(client):
    assert client.get("/users/999", expect_errors=True).status == 404
    assert client.get("/users/abc", expect_errors=True).status == 404
    assert client.get("/api/users/1%27%20OR%201=1", expect_errors=True).status == 404


# -- forms --------------------------------------------------------------------------------------


def test_create_redirects_and_stores_a_password_hash(client, backend):
    response = client.post("/users", {"csrf_token": token(client), "name": "ada", "fullname": "Ada Lovelace",
                                      "password": "analytical engine"})
    assert response.status == 303
    stored = backend.sql("SELECT fullname, password FROM users WHERE name = 'ada'")[0]
    assert stored[0] == "Ada Lovelace"
    assert "analytical" not in stored[1] and check_password(stored[1], "analytical engine")
    assert not check_password(stored[1], "wrong password")


@pytest.mark.parametrize("fields", [
    {"name": "", "fullname": "x", "password": "12345678"},
    {"name": "a" * 41, "fullname": "x", "password": "12345678"},
    {"name": "ada", "fullname": "", "password": "12345678"},
    {"name": "ada", "fullname": "x" * 10000, "password": "12345678"},
    {"name": "ada", "fullname": "x", "password": "short"},
    {"name": "Robert'); DROP TABLE users;--", "fullname": "x", "password": "12345678"},
], ids=["empty-name", "long-name", "empty-fullname", "oversized-fullname", "short-password", "sql-name"])
def test_bad_form_input_is_400_and_writes_nothing(client, backend, fields):
    before = user_count(backend)
    response = client.post("/users", dict(fields, csrf_token=token(client)), expect_errors=True)
    assert response.status == 400
    assert user_count(backend) == before


def test_duplicate_name_is_400(client, backend):
    response = client.post("/users", {"csrf_token": token(client), "name": "user1", "fullname": "x",
                                      "password": "12345678"}, expect_errors=True)
    assert response.status == 400
    assert user_count(backend) == 3


@pytest.mark.parametrize("csrf", [None, "0" * 64], ids=["missing", "forged"])
def test_state_changing_forms_need_the_csrf_token(client, backend, csrf):
    token(client)  # the browser has its nonce cookie
    fields = {"fullname": "changed"}
    if csrf:
        fields["csrf_token"] = csrf
    assert client.post("/users/1/edit", fields, expect_errors=True).status == 403
    assert client.post("/users/1/delete", fields, expect_errors=True).status == 403
    assert backend.fullname(1) == "Full 1" and user_count(backend) == 3


def test_csrf_token_is_valid_in_every_process_with_the_same_secret(client):
    nonce = "a" * 32
    import hashlib
    import hmac

    expected = hmac.new(b"cookbook-test-secret", nonce.encode(), hashlib.sha256).hexdigest()
    client.cookies["csrf_nonce"] = nonce
    assert token(client) == expected


def test_edit_then_redirect(client, backend):
    response = client.post("/users/1/edit", {"csrf_token": token(client, "/users/1/edit"), "fullname": "Edited"})
    assert response.status == 303 and response.header("Location").endswith("/users/1")
    assert backend.fullname(1) == "Edited"


def test_delete_then_redirect(client, backend):
    assert client.post("/users/2/delete", {"csrf_token": token(client, "/users/2")}).status == 303
    assert backend.fullname(2) is None


def test_crash_route_rolls_its_write_back(client, backend):
    response = client.post("/users/1/crash", {"csrf_token": token(client, "/users/1"), "fullname": "never"},
                           expect_errors=True)
    assert response.status == 500
    assert backend.fullname(1) == "Full 1"


# -- JSON API -----------------------------------------------------------------------------------


def post_json(client, path, body, content_type="application/json"):
    data = body if isinstance(body, str) else json.dumps(body)
    return client.post(path, data, headers={"Content-Type": content_type}, expect_errors=True)


def test_api_update_then_read(client, backend):
    response = post_json(client, "/api/users/1", {"fullname": "Robert'); DROP TABLE users;--"})
    assert response.status == 200
    assert json.loads(client.get("/api/users/1").body)["fullname"] == "Robert'); DROP TABLE users;--"
    assert user_count(backend) == 3


@pytest.mark.parametrize("body, content_type, status", [
    ("{not json", "application/json", 400),
    ("[1, 2]", "application/json", 400),
    (json.dumps({"fullname": 5}), "application/json", 400),
    (json.dumps({"fullname": "x" * 5000}), "application/json", 400),
    (json.dumps({"fullname": "x"}), "application/x-www-form-urlencoded", 415),
], ids=["malformed", "not-object", "wrong-type", "oversized", "form-content-type"])
def test_api_bad_input_is_4xx_and_writes_nothing(client, backend, body, content_type, status):
    assert post_json(client, "/api/users/1", body, content_type).status == status
    assert backend.fullname(1) == "Full 1"


def test_api_create_and_crash(client, backend):
    created = post_json(client, "/api/users", {"name": "grace", "fullname": "Grace Hopper", "password": "cobol1959"})
    assert created.status == 201
    new_id = json.loads(created.body)["id"]
    assert post_json(client, "/api/users/%d/crash" % new_id, {"fullname": "never"}).status == 500
    assert backend.fullname(new_id) == "Grace Hopper"


def test_api_stats_reports_no_open_scope_between_requests(client):
    stats = json.loads(client.get("/api/stats").body)
    assert stats["open_scopes"] == 0 and stats["worker"] == str(os.getpid())


# -- the two commands -----------------------------------------------------------------------


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_models_then_app_serve_the_sample_users(tmp_path):
    env = dict(os.environ, TXSCOPE_DATABASE_URI="", PYTHONPATH=ROOT)
    env.pop("TXSCOPE_CSRF_SECRET")
    out = subprocess.run([sys.executable, os.path.join(ROOT, "models.py")], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=120)
    assert "10 users in sqlite:" in out.stdout, out.stderr
    assert (tmp_path / "mydatabase.db").exists()
    port = _free_port()
    server = subprocess.Popen([sys.executable, os.path.join(ROOT, "app.py"), str(port)], cwd=tmp_path, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                page = urllib.request.urlopen("http://127.0.0.1:%d/" % port, timeout=5).read().decode()
                break
            except OSError:
                assert time.monotonic() < deadline, "python app.py did not answer on port %d" % port
                time.sleep(0.1)
        assert page.count("<li>") == 10
    finally:
        server.terminate()
        server.wait(10)


def test_form_that_is_not_utf8_is_400(client, backend):
    response = client.post("/users/1/edit", "csrf_token=%s&fullname=%%c3%%28" % token(client, "/users/1/edit"),
                           headers={"Content-Type": "application/x-www-form-urlencoded"}, expect_errors=True)
    assert response.status == 400
    assert backend.fullname(1) == "Full 1"
