"""Crawls never reach metadata or link-local addresses; private ranges when asked."""

import asyncio

import pytest
from scrapy import Request

from crawler.netguard import BlockedAddress, NetworkGuardMiddleware, blocked_reason


@pytest.mark.parametrize(
    "address",
    ["169.254.169.254", "169.254.0.1", "fd00:ec2::254", "fe80::1", "0.0.0.0", "::ffff:169.254.169.254", "100.100.100.200"],
)
def test_metadata_and_link_local_addresses_are_always_blocked(address):
    assert blocked_reason(address, block_private=False)


@pytest.mark.parametrize("address", ["10.1.2.3", "192.168.0.10", "172.16.5.4", "127.0.0.1", "::1", "fc00::1"])
def test_private_ranges_are_blocked_only_when_asked(address):
    assert blocked_reason(address, block_private=False) == ""
    assert "private" in blocked_reason(address, block_private=True)


def test_public_addresses_pass():
    assert blocked_reason("93.184.216.34", block_private=True) == ""
    assert blocked_reason("2606:2800:220:1:248:1893:25c8:1946", block_private=True) == ""


def run(coro):
    return asyncio.new_event_loop().run_until_complete(coro)


def test_middleware_refuses_a_literal_metadata_url():
    mw = NetworkGuardMiddleware()
    with pytest.raises(BlockedAddress, match="169.254.169.254"):
        run(mw.process_request(Request("http://169.254.169.254/latest/meta-data/")))


def test_middleware_checks_the_resolved_address_of_a_name():
    mw = NetworkGuardMiddleware(block_private=True)
    with pytest.raises(BlockedAddress, match="localhost resolves to"):
        run(mw.process_request(Request("http://localhost:8000/")))
    assert run(NetworkGuardMiddleware().process_request(Request("http://localhost:8000/"))) is None


@pytest.fixture
def redirecting_site():
    """A page on 127.0.0.1 that redirects to the cloud metadata address."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(302)
            self.send_header("Location", "http://169.254.169.254/latest/meta-data/")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/"
    server.shutdown()


def test_a_redirect_to_the_metadata_address_is_refused(r, code, redis_url, redirecting_site):
    from crawler import definition, keys, state
    from helpers import conduct, start_worker

    state.launch(r, code, definition.validate({
        "name": "redirect", "start_urls": [redirecting_site],
        # the metadata address is even an allowed domain: only the address check stands in the way
        "allowed_domains": ["127.0.0.1", "169.254.169.254"],
        "item": {"fields": [{"name": "title", "selector": "title::text"}]},
        "settings": {"DOWNLOAD_TIMEOUT": 3, "RETRY_ENABLED": False, "ROBOTSTXT_OBEY": False},
    }))
    conduct(r, code, [start_worker(redis_url, code, "w1")])
    logged = [fields.get("message", "") for _id, fields in r.xrange(keys.log(code))]
    assert any("Refused http://169.254.169.254/latest/meta-data/" in m for m in logged), logged
    assert r.xlen(keys.items(code)) == 0
