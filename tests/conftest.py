import pytest
from django.conf import settings

from dashboard.redis import get_redis


def pytest_configure(config):
    # Fast hashing in tests; production keeps Django's default.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


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
