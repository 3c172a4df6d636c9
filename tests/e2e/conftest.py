"""Browser tests: Playwright driving Debian's Chromium against a real ASGI server."""

import os
import threading
from pathlib import Path

import pytest

from dashboard.conductor import Conductor
from tests.servers import ThreadedServer

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
CHROMIUM = "/usr/bin/chromium"

# Playwright's sync API keeps an event loop running in the test thread; the ORM calls made by
# fixtures there are still plain synchronous calls.
os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"


def pytest_collection_modifyitems(items):
    for item in items:
        if "/tests/e2e/" in str(item.fspath):
            item.add_marker(pytest.mark.browser)


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args):
    return {
        **browser_type_launch_args,
        "executable_path": CHROMIUM,
        "args": [
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
        ],
    }


@pytest.fixture
def live_asgi(transactional_db):
    server = ThreadedServer().start()
    yield server
    server.stop()


@pytest.fixture
def conductor(live_asgi):
    """The conductor loop of `make run`, in a thread beside the test server. It shares SQLite's
    in-memory test database, whose locks fail at once instead of waiting: the conductor then
    simply tries again on its next tick."""
    stop = threading.Event()
    conductor = Conductor(tick=0.1)
    thread = threading.Thread(target=conductor.run, args=(stop.is_set,), daemon=True)
    thread.start()
    yield conductor
    stop.set()
    thread.join(10)


@pytest.fixture
def artifacts():
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


@pytest.fixture
def logged_in_page(page, live_asgi, owner):
    page.goto(f"{live_asgi.url}/accounts/login/")
    page.fill("#id_username", "owner")
    page.fill("#id_password", "owner-pass-123")
    page.click("button[type=submit]")
    page.wait_for_url(f"{live_asgi.url}/")
    return page
