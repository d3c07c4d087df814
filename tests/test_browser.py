"""The cookbook demo in a real browser: Debian's Chromium, headless, driven by Playwright.

One demo per module, served as `python app.py --side-by-side PORT` (the
scope on PORT, off on PORT + 1) on a fresh SQLite database.  Each test does
what a user would and asserts what the page shows.  Screenshots go to
``$TXSCOPE_ARTIFACTS/screenshots`` (default: pytest's temporary directory);
they are never tracked.

Needs ``apt-get install chromium`` and ``pip install playwright``; Playwright's
own browser download (``playwright install``) is never used.
"""

import os
import re

import pytest

from demo_server import free_port, serving, wait_for

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """Base URLs of the demo with the scope and without it."""
    port = free_port(2)
    with serving(tmp_path_factory.mktemp("demo"), "--side-by-side", str(port)):
        scoped, unscoped = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{port + 1}"
        wait_for(scoped + "/"), wait_for(unscoped + "/")
        yield scoped, unscoped


@pytest.fixture(scope="module")
def browser():
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory):
    base = os.environ.get("TXSCOPE_ARTIFACTS")
    folder = os.path.join(base, "screenshots") if base else str(tmp_path_factory.mktemp("screenshots"))
    os.makedirs(folder, exist_ok=True)
    return folder


@pytest.fixture
def page(browser, demo, screenshots, request):
    """A fresh browser tab on the scoped server; its last state is saved as a screenshot."""
    context = browser.new_context(base_url=demo[0])
    tab = context.new_page()
    yield tab
    tab.screenshot(path=os.path.join(screenshots, f"{request.node.name}.png"), full_page=True)
    context.close()


def snap(page, screenshots, name):
    page.screenshot(path=os.path.join(screenshots, f"{name}.png"), full_page=True)


def create_user(page, name, fullname, password="analytical engine"):
    page.goto("/")
    page.get_by_role("navigation").get_by_role("link", name="New user").click()
    page.get_by_label("User name").fill(name)
    page.get_by_label("Password").fill(password)
    page.get_by_label("Full name").fill(fullname)
    page.get_by_role("button", name="Save").click()


def test_first_page_says_what_it_shows_and_who_served_it(page, screenshots):
    page.goto("/")
    assert page.title() == "One transaction per request · webpy_txscope demo"
    assert "gives each web.py request its own SQLObject transaction" in page.inner_text("main")
    assert page.get_by_role("cell", name="raises any other exception (web.py makes it a 500)").is_visible()
    assert re.search(r"Served by process \d+, thread .+; the scope is on\.", page.inner_text("footer"))
    assert "open scopes 0 (not counting this request)" in page.inner_text("footer")
    assert page.locator("#users li").count() >= 10


def test_create_shows_the_new_user_and_a_success_message(page, screenshots):
    create_user(page, "ada", "Ada Lovelace")
    assert page.get_by_role("status").inner_text() == "User created."
    assert page.locator("#fullname").inner_text() == "Ada Lovelace"


def test_validation_errors_keep_the_form_filled_in(page, screenshots):
    create_user(page, "vera", "Vera Valid")
    create_user(page, "vera", "Ada the Second", password="short")
    assert page.get_by_role("alert").inner_text().startswith("Nothing was saved")
    assert page.locator("#name-error").inner_text() == "User name: already taken"
    assert page.locator("#password-error").inner_text() == "Password: 8 to 200 characters"
    assert page.get_by_label("Full name").input_value() == "Ada the Second"
    assert page.get_by_label("Password").input_value() == ""


def test_edit_saves_and_says_so(page, screenshots):
    create_user(page, "edith", "Edith")
    page.get_by_role("link", name="Edit").click()
    page.get_by_label("Full name").fill("Ada King")
    page.get_by_role("button", name="Save").click()
    assert page.get_by_role("status").inner_text() == "Saved."
    assert page.locator("#fullname").inner_text() == "Ada King"


def test_crash_shows_a_friendly_page_saying_the_write_was_rolled_back(page, screenshots):
    create_user(page, "carl", "Ada King")
    page.get_by_label("Full name to write").fill("Never kept")
    with page.expect_response(re.compile(r"/crash$")) as answer:
        page.get_by_role("button", name="Write, then crash").click()
    assert answer.value.status == 500
    message = page.locator("#message").inner_text()
    assert "The write was rolled back" in message and "still Ada King" in message
    assert "Traceback" not in page.content()
    snap(page, screenshots, "crash-page")
    page.get_by_role("link", name="Back to the user").click()
    assert page.locator("#fullname").inner_text() == "Ada King"


def test_an_unknown_user_gets_the_sites_404_page_with_a_way_back(page, screenshots):
    answer = page.goto("/users/987654")
    assert answer.status == 404 and page.title() == "Not Found · webpy_txscope demo"
    page.get_by_role("link", name="Back to the users").click()
    assert page.locator("#users li").count() >= 10


def test_delete_asks_first_then_removes_the_user(page, screenshots):
    create_user(page, "dora", "Dora")
    page.get_by_role("link", name="Delete", exact=True).click()
    assert "This cannot be undone" in page.inner_text("main")
    snap(page, screenshots, "delete-confirmation")
    page.get_by_role("button", name="Delete").click()
    assert page.get_by_role("status").inner_text() == "User deleted."
    assert page.locator("#users").get_by_role("link", name="dora", exact=True).count() == 0


def verdicts(page):
    """{server label: (full name it served, verdict)} from the stale-read page's table."""
    rows = page.locator("#reads tr").all()[1:]
    cells = [[cell.inner_text() for cell in row.locator("td").all()] for row in rows]
    return {label: (fullname, verdict) for label, _, fullname, verdict in cells}


def test_stale_read_page_the_unscoped_server_serves_the_old_value_the_scoped_one_never(page, screenshots):
    page.goto("/stale?id=1")
    before = page.locator("#truth").inner_text()
    assert verdicts(page) == {"with the scope": (before, "fresh"), "without the scope": (before, "fresh")}
    page.get_by_label("New full name").first.fill("Changed through the scoped server")
    page.get_by_role("button", name="Save through the server with the scope").click()
    assert page.get_by_role("status").inner_text() == "Saved."
    assert page.locator("#truth").inner_text() == "Changed through the scoped server"
    assert verdicts(page) == {"with the scope": ("Changed through the scoped server", "fresh"),
                              "without the scope": (before, "stale")}
    snap(page, screenshots, "stale-after-scoped-write")
    page.get_by_label("New full name").nth(1).fill("Changed through the unscoped server")
    page.get_by_role("button", name="Save through the server without the scope").click()
    assert verdicts(page)["with the scope"] == ("Changed through the unscoped server", "fresh")
