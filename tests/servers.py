"""Servers of the test process: a real ASGI server (uvicorn) serving Crawlsite, and the network
policy's exceptions for the sites tests crawl.

HTTP and websockets go through the same stack as `make run`. It runs in a thread so it shares
pytest-django's test database (use it with ``transactional_db``). Crawls refuse loopback addresses,
so each demo site is opened (its port only) while it runs; a test that serves pages of its own
opens them with :func:`allow_crawling` (see tests/dashboard/test_network_policy.py).
"""

import asyncio
import os
import threading

import uvicorn

from launcher.redis import free_port


class ThreadedServer:
    def __init__(self, app="crawlsite.asgi:application"):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="off", ws="websockets-sansio"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        asyncio.run(self.server.serve())

    def start(self):
        self.thread.start()
        for _ in range(200):
            if self.server.started:
                return self
            self.thread.join(0.05)
        raise RuntimeError("test ASGI server did not start")

    def stop(self):
        self.server.should_exit = True
        self.thread.join(10)


# -- the network policy in tests -------------------------------------------------------------
# Crawls refuse loopback addresses (crawler.netpolicy), and every site a test serves is on
# 127.0.0.1. So each demo site a test starts is opened, address and port only, in
# CRAWLSITE_ALLOWED_NETWORKS of this process, which the RQ workers and ``python -m crawler``
# processes started afterwards inherit; it is closed again when the site stops. Nothing else on
# loopback is opened: the dashboard's live server and Redis stay refused.
ALLOWED_NETWORKS = "CRAWLSITE_ALLOWED_NETWORKS"
_opened: list[str] = []


def _entry(host, port):
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _publish():
    os.environ[ALLOWED_NETWORKS] = ",".join(_opened)


def allow_crawling(host, port):
    """Let crawls started from now on reach ``host:port`` (until :func:`disallow_crawling`)."""
    _opened.append(_entry(host, port))
    _publish()


def disallow_crawling(host, port):
    entry = _entry(host, port)
    if entry in _opened:
        _opened.remove(entry)
    _publish()


def allow_test_sites():
    """Open each demo site (in-process or its own process) for crawls while it runs."""
    from demosite.server import Site, SiteProcess

    _publish()  # start from nothing opened, whatever the developer's environment says
    site_start, site_stop = Site.start, Site.stop
    process_init, process_stop = SiteProcess.__init__, SiteProcess.stop

    def start(self):
        allow_crawling(self.host, self.port)
        return site_start(self)

    def stop(self):
        disallow_crawling(self.host, self.port)
        return site_stop(self)

    def init(self, *args, **kwargs):
        process_init(self, *args, **kwargs)
        allow_crawling(self.host, self.port)

    def stop_process(self):
        disallow_crawling(self.host, self.port)
        return process_stop(self)

    Site.start, Site.stop = start, stop
    SiteProcess.__init__, SiteProcess.stop = init, stop_process
