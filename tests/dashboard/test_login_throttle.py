"""Login throttling with django-axes (issue 11): a user name + address pair is locked out after
LOGIN_FAILURE_LIMIT wrong passwords, on the dashboard's login page and the admin's alike."""

from datetime import timedelta

import pytest
from axes.models import AccessAttempt
from django.core.management import call_command
from django.test import Client
from django.urls import reverse
from django.utils import timezone

pytestmark = pytest.mark.django_db

LIMIT = 3


@pytest.fixture(autouse=True)
def small_limit(settings):
    settings.AXES_FAILURE_LIMIT = LIMIT
    settings.AXES_COOLOFF_TIME = timedelta(minutes=15)


def login(client, password, username="owner", path=None, ip="203.0.113.7"):
    return client.post(path or reverse("login"), {"username": username, "password": password},
                       REMOTE_ADDR=ip)


def fail(client, times, **kwargs):
    for _ in range(times):
        response = login(client, "wrong-password", **kwargs)
        assert response.status_code in (200, 429)
    return response


def logged_in(client):
    return "_auth_user_id" in client.session


def test_the_attempt_after_the_limit_is_refused_even_with_the_right_password(client, owner):
    fail(client, LIMIT - 1)
    assert not AccessAttempt.objects.filter(failures_since_start__gte=LIMIT).exists()
    response = login(client, "wrong-password")
    assert response.status_code == 429
    response = login(client, "owner-pass-123")
    assert response.status_code == 429
    page = response.content.decode()
    assert "Too many failed logins" in page and "“owner”" in page
    assert f"after {LIMIT} wrong passwords" in page and "Try again in 15 minutes" in page
    assert not logged_in(client)
    assert client.get("/").status_code == 302  # still anonymous


def test_wrong_passwords_below_the_limit_say_so_and_the_right_one_still_works(client, owner):
    response = fail(client, LIMIT - 1)
    assert response.status_code == 200 and "Please enter a correct username and password" in response.content.decode()
    response = login(client, "owner-pass-123")
    assert response.status_code == 302 and logged_in(client)


def test_a_successful_login_clears_the_count(client, owner):
    fail(client, LIMIT - 1)
    assert login(client, "owner-pass-123").status_code == 302
    client.post(reverse("logout"))
    fail(client, LIMIT - 1)
    assert login(client, "owner-pass-123").status_code == 302


def test_lockout_is_per_user_name_and_address(client, owner, outsider):
    fail(client, LIMIT)
    assert login(client, "owner-pass-123").status_code == 429
    # The same user from another address, and another user from the same address, still get in.
    assert login(Client(), "owner-pass-123", ip="198.51.100.9").status_code == 302
    assert login(Client(), "outsider-pass-123", username="outsider").status_code == 302


def test_lockout_clears_when_the_cool_off_has_passed(client, owner):
    fail(client, LIMIT)
    assert login(client, "owner-pass-123").status_code == 429
    # Time passes: the attempts are now older than the cool-off period.
    AccessAttempt.objects.update(attempt_time=timezone.now() - timedelta(minutes=16))
    assert login(client, "owner-pass-123").status_code == 302 and logged_in(client)


def test_an_administrator_can_clear_a_lockout(client, owner):
    fail(client, LIMIT)
    assert login(client, "owner-pass-123").status_code == 429
    call_command("axes_reset_username", "owner")
    assert login(client, "owner-pass-123").status_code == 302


def test_admin_login_is_throttled_too(client, staff):
    path = "/admin/login/"
    for _ in range(LIMIT):
        login(client, "wrong-password", username="staff", path=path)
    response = login(client, "staff-pass-123", username="staff", path=path)
    assert response.status_code == 429 and "Too many failed logins" in response.content.decode()
    assert not logged_in(client)


def test_login_throttling_settings_come_from_the_environment(tmp_path):
    import subprocess
    import sys

    code = ("import django, os; os.environ['DJANGO_SETTINGS_MODULE']='crawlsite.settings'; django.setup();"
            "from django.conf import settings as s; print(s.AXES_FAILURE_LIMIT, int(s.AXES_COOLOFF_TIME.total_seconds()))")
    base = {"PATH": "/usr/bin:/bin", "CRAWLSITE_VAR_DIR": str(tmp_path)}
    run = lambda **env: subprocess.run([sys.executable, "-c", code], env={**base, **env}, capture_output=True, text=True)  # noqa: E731
    assert run().stdout.split() == ["5", "900"]
    assert run(LOGIN_FAILURE_LIMIT="10", LOGIN_LOCKOUT_MINUTES="2").stdout.split() == ["10", "120"]
    bad = run(LOGIN_FAILURE_LIMIT="0")
    assert bad.returncode != 0 and "LOGIN_FAILURE_LIMIT=0 is below the minimum of 1" in bad.stderr
