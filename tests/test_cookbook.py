"""The cookbook app: its routes, its input rules, CSRF, escaping, and its two commands."""

import json
import os
import re
import socket
import urllib.error
import urllib.request

import pytest

os.environ.setdefault("TXSCOPE_CSRF_SECRET", "cookbook-test-secret")
import app as cookbook  # noqa: E402
from models import check_password  # noqa: E402
from demo_server import free_port as _free_port, serving, wait_for  # noqa: E402
from webapps import paste_app  # noqa: E402


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
    assert response.status == 303 and response.header("Location").endswith("/users/1?done=saved")
    assert backend.fullname(1) == "Edited"


def test_delete_then_redirect(client, backend):
    assert client.post("/users/2/delete", {"csrf_token": token(client, "/users/2")}).status == 303
    assert backend.fullname(2) is None


def test_crash_route_rolls_its_write_back(client, backend):
    response = client.post("/users/1/crash", {"csrf_token": token(client, "/users/1"), "fullname": "never"},
                           expect_errors=True)
    assert response.status == 500
    assert backend.fullname(1) == "Full 1"


def test_crash_page_says_the_write_was_rolled_back_and_shows_no_traceback(client):
    response = client.post("/users/1/crash", {"csrf_token": token(client, "/users/1"), "fullname": "never"},
                           expect_errors=True)
    text = response.body.decode()
    assert "The write was rolled back" in text and "still <b>Full 1</b>" in text
    assert 'href="/users/1"' in text
    assert "Traceback" not in text and "cookbook-test-secret" not in text and "RuntimeError" not in text


def test_edit_form_with_an_error_keeps_its_value_and_names_the_field(client, backend):
    response = client.post("/users/1/edit", {"csrf_token": token(client, "/users/1/edit"), "fullname": " "},
                           expect_errors=True)
    assert response.status == 400
    text = response.body.decode()
    assert 'id="fullname-error">Full name: 1 to 200 printable characters' in text
    assert backend.fullname(1) == "Full 1"


def test_new_user_form_with_errors_keeps_the_values_but_never_the_password(client):
    fields = {"csrf_token": token(client), "name": "user1", "fullname": "Ada <L>", "password": "short12"}
    text = client.post("/users", fields, expect_errors=True).body.decode()
    assert 'value="user1"' in text and 'value="Ada &lt;L&gt;"' in text and "short12" not in text
    assert "User name: already taken" in text and "Password: 8 to 200 characters" in text


def test_delete_asks_for_confirmation_first(client, backend):
    assert 'href="/users/2/delete">Delete</a>' in client.get("/users/2").body.decode()
    text = client.get("/users/2/delete").body.decode()
    assert "Delete <b>user2</b>" in text and "cannot be undone" in text
    assert backend.fullname(2) == "Full 2"


def test_success_messages_after_each_change(client):
    assert "User created." in client.get("/users/1?done=created").body.decode()
    assert "Saved." in client.get("/users/1?done=saved").body.decode()
    assert "User deleted." in client.get("/?done=deleted").body.decode()
    assert 'class="notice"' not in client.get("/?done=<script>").body.decode()


@pytest.mark.parametrize("method, path, status", [
    ("GET", "/nowhere", 404), ("GET", "/users/999", 404), ("GET", "/users/abc", 404),
    ("PUT", "/users/1", 405), ("POST", "/users/1/edit", 403),
], ids=["unknown-path", "unknown-user", "non-numeric", "method", "csrf"])
def test_error_pages_share_the_layout_and_a_way_back(client, method, path, status):
    response = getattr(client, method.lower())(path, expect_errors=True) if method != "PUT" else \
        client._gen_request("PUT", path, expect_errors=True)
    text = response.body.decode()
    assert response.status == status and response.header("Content-Type").startswith("text/html")
    assert '<html lang="en">' in text and "<nav>" in text and 'href="/">Back to the users' in text


@pytest.mark.parametrize("method, path, status", [
    ("GET", "/api/nowhere", 404), ("GET", "/api/users/999", 404), ("DELETE", "/api/users/1", 405),
    ("POST", "/api/users/1", 415),
], ids=["unknown-path", "unknown-user", "method", "content-type"])
def test_api_errors_are_json(client, method, path, status):
    response = client._gen_request(method, path, expect_errors=True)
    assert response.status == status and response.header("Content-Type") == "application/json"
    assert json.loads(response.body)["error"].startswith(str(status))


def test_api_crash_answers_json_saying_nothing_was_kept(client, backend):
    body = json.loads(post_json(client, "/api/users/1/crash", {"fullname": "never"}).body)
    assert body == {"error": "500 Internal Server Error", "kept": False,
                    "message": "The server failed while answering. Reload the page to see what was saved."}


def test_api_delete_needs_json_and_deletes(client, backend):
    assert post_json(client, "/api/users/2/delete", "x=1", "application/x-www-form-urlencoded").status == 415
    assert backend.fullname(2) == "Full 2"
    assert json.loads(post_json(client, "/api/users/2/delete", {}).body)["deleted"] == 2
    assert backend.fullname(2) is None


def test_every_page_shows_its_process_thread_and_stats(client):
    text = client.get("/").body.decode()
    assert f'process <b id="pid">{os.getpid()}</b>, thread <b>' in text
    assert "open scopes 0 (not counting this request)" in text and "oldest open scope 0.000 s" in text


def test_first_page_says_what_the_package_does_and_shows_the_rules(client):
    text = client.get("/").body.decode()
    assert "gives each web.py request its own SQLObject transaction" in text
    assert "<td>raises any other exception (web.py makes it a 500)</td><td>rollback</td>" in text


def test_stale_page_alone_lists_this_server(client, monkeypatch):
    monkeypatch.delenv("TXSCOPE_DEMO_PEERS", raising=False)
    text = client.get("/stale?id=1").body.decode()
    assert 'id="truth">Full 1<' in text and "python app.py --side-by-side" in text


def test_stale_page_saves_through_this_server(client, backend):
    fields = {"csrf_token": token(client, "/users/1"), "id": "1", "fullname": "Fresh"}
    response = client.post("/stale", fields)
    assert response.header("Location").endswith("/stale?id=1&done=saved") and backend.fullname(1) == "Fresh"


def test_stale_page_never_redirects_to_an_address_from_the_form(client, monkeypatch):
    monkeypatch.setenv("TXSCOPE_DEMO_PEERS", "a=http://127.0.0.1:1")
    fields = {"csrf_token": token(client, "/users/1"), "id": "1", "fullname": "x"}
    assert client.post("/stale", dict(fields, back="http://evil.example")).header("Location") == \
        "http://localhost/stale?id=1&done=saved"
    assert client.post("/stale", dict(fields, back="http://127.0.0.1:1")).header("Location") == \
        "http://127.0.0.1:1/stale?id=1&done=saved"


def test_body_over_the_limit_is_413(client, backend, monkeypatch):
    monkeypatch.setattr(cookbook, "MAX_BODY", 100)
    response = client.post("/users/1/edit", {"csrf_token": "x" * 64, "fullname": "y" * 100}, expect_errors=True)
    assert response.status == 413 and "larger than 100 bytes" in response.body.decode()
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
    (json.dumps({"fullname": "x" * 5000}), "application/json", 413),
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
    assert stats["oldest_scope_age"] == 0.0  # not the age of the scope of the request asking


# -- the two commands -----------------------------------------------------------------------


def call(url, payload=None):
    """(status, JSON body) of a GET, or of a POST of *payload* as JSON."""
    data = None if payload is None else json.dumps(payload).encode()
    request = urllib.request.Request(url, data, {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, json.load(answer)
    except urllib.error.HTTPError as error:
        return error.code, json.load(error)


def test_models_then_app_serve_the_sample_users(tmp_path):
    port = _free_port()
    with serving(tmp_path, str(port)):
        assert wait_for(f"http://127.0.0.1:{port}/").count("<li>") == 10
    assert (tmp_path / "mydatabase.db").exists()


def test_the_port_can_come_from_the_environment(tmp_path):
    port = _free_port()
    with serving(tmp_path, TXSCOPE_PORT=str(port)):
        assert "One transaction per request" in wait_for(f"http://127.0.0.1:{port}/")


def test_python_app_py_shows_no_traceback_and_no_secret(tmp_path):
    port = _free_port()
    with serving(tmp_path, str(port)):
        wait_for(f"http://127.0.0.1:{port}/")
        status, body = call(f"http://127.0.0.1:{port}/api/users/1/crash", {"fullname": "never"})
    secret = (tmp_path / "csrf_secret").read_text().strip()
    assert status == 500 and body["kept"] is False
    assert "Traceback" not in json.dumps(body) and secret not in json.dumps(body)


def test_debug_pages_only_when_turned_on_explicitly(tmp_path):
    port = _free_port()
    with serving(tmp_path, str(port), TXSCOPE_DEBUG="1"):
        wait_for(f"http://127.0.0.1:{port}/")
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            # Read raw: web.py's debug page does not always make a well-formed chunked reply.
            sock.sendall(b"POST /api/users/1/crash HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 17\r\nConnection: close\r\n\r\n{\"fullname\": \"x\"}")
            answer = b"".join(iter(lambda: sock.recv(65536), b"")).decode("latin-1")
    assert answer.startswith("HTTP/1.1 500 ") and "RuntimeError" in answer


def test_a_body_over_the_limit_gets_413_before_it_is_sent(tmp_path):
    port = _free_port()
    with serving(tmp_path, str(port)):
        wait_for(f"http://127.0.0.1:{port}/")
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            # Announces 50 MB and sends none of it: the answer must come anyway.
            sock.sendall(b"POST /users HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n"
                         b"Content-Length: 52428800\r\n\r\n")
            answer = sock.recv(4096).decode("latin-1")
    assert answer.startswith("HTTP/1.1 413 ")


def chunked_post(port, path, body, chunk=50):
    """The status line of a POST of *body* sent with Transfer-Encoding: chunked (no length)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n".encode())
        for start in range(0, len(body), chunk):
            part = body[start:start + chunk]
            sock.sendall(b"%x\r\n%s\r\n" % (len(part), part))
        sock.sendall(b"0\r\n\r\n")
        return sock.recv(4096).decode("latin-1").split("\r\n")[0]


def test_a_chunked_body_is_read_up_to_the_limit_only(tmp_path):
    port = _free_port()
    with serving(tmp_path, str(port), TXSCOPE_MAX_BODY="200"):
        wait_for(f"http://127.0.0.1:{port}/")
        small = json.dumps({"fullname": "Sent in chunks"}).encode()
        assert chunked_post(port, "/api/users/1", small) == "HTTP/1.1 200 OK"
        assert call(f"http://127.0.0.1:{port}/api/users/1")[1]["fullname"] == "Sent in chunks"
        big = json.dumps({"fullname": "x" * 190}).encode()
        assert chunked_post(port, "/api/users/1", big) == "HTTP/1.1 413 Request Entity Too Large"
        assert call(f"http://127.0.0.1:{port}/api/users/1")[1]["fullname"] == "Sent in chunks"


def test_side_by_side_the_unscoped_server_serves_stale_rows_and_the_scoped_one_never(tmp_path):
    port = _free_port(2)
    with serving(tmp_path, "--side-by-side", str(port)):
        scoped, unscoped = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{port + 1}"
        wait_for(scoped + "/"), wait_for(unscoped + "/")
        assert call(unscoped + "/api/users/1")[1]["fullname"] == call(scoped + "/api/users/1")[1]["fullname"]
        call(unscoped + "/api/users/1", {"fullname": "Changed by the unscoped one"})
        assert call(scoped + "/api/users/1")[1]["fullname"] == "Changed by the unscoped one"
        call(scoped + "/api/users/1", {"fullname": "Changed by the scoped one"})
        assert call(unscoped + "/api/users/1")[1]["fullname"] == "Changed by the unscoped one"
        page = wait_for(scoped + "/stale?id=1")
        # The crash route tells the truth either way: without the scope the write stays.
        assert call(unscoped + "/api/users/2/crash", {"fullname": "kept"}) == (500, {
            "error": "500 Internal Server Error", "kept": True,
            "message": "The server failed while answering. Reload the page to see what was saved."})
        assert call(scoped + "/api/users/2")[1]["fullname"] == "kept"
    assert page.count('<tr class="fresh">') == 1 and page.count('<tr class="stale">') == 1


def test_form_that_is_not_utf8_is_400(client, backend):
    response = client.post("/users/1/edit", "csrf_token=%s&fullname=%%c3%%28" % token(client, "/users/1/edit"),
                           headers={"Content-Type": "application/x-www-form-urlencoded"}, expect_errors=True)
    assert response.status == 400
    assert backend.fullname(1) == "Full 1"
