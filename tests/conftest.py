import pytest
from django.conf import settings

from dashboard.redis import get_redis


def pytest_configure(config):
    # Fast hashing in tests; production keeps Django's default.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    # Crawls reach the demo sites tests start, and nothing else on loopback (tests/servers.py).
    from tests.servers import allow_test_sites

    allow_test_sites()


@pytest.fixture(autouse=True)
def clean_private_redis():
    """Each test starts with an empty Redis: no RQ job or crawl left by an earlier test can be
    picked up by this test's workers. Only the suite's own embedded server is ever flushed."""
    yield
    from tests.plugins import embedded_redis
    from tests.workers import kill_leftover_workers

    kill_leftover_workers()
    server = embedded_redis._state.get("server")
    if server is not None and settings.REDIS_URL == server.url:
        get_redis().flushdb()


@pytest.fixture
def redis_client():
    return get_redis()


@pytest.fixture
def owner(django_user_model):
    return django_user_model.objects.create_user("owner", password="owner-pass-123")


@pytest.fixture
def teammate(django_user_model):
    return django_user_model.objects.create_user("teammate", password="teammate-pass-123")


@pytest.fixture
def outsider(django_user_model):
    return django_user_model.objects.create_user("outsider", password="outsider-pass-123")


@pytest.fixture
def staff(django_user_model):
    return django_user_model.objects.create_user("staff", password="staff-pass-123", is_staff=True)


@pytest.fixture
def owner_client(client, owner):
    client.force_login(owner)
    return client
