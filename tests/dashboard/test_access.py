import pytest
from django.urls import reverse

pytestmark = pytest.mark.django_db


def test_anonymous_users_are_sent_to_login(client):
    response = client.get("/")
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("login"))


@pytest.mark.parametrize("path", ["/admin/", "/rq/"])
def test_staff_pages_send_anonymous_users_to_the_admin_login(client, path):
    response = client.get(path)
    assert response.status_code == 302
    assert "/admin/login/" in response["Location"]


def test_login_page_is_public_and_has_csrf(client):
    response = client.get(reverse("login"))
    assert response.status_code == 200
    assert b"csrfmiddlewaretoken" in response.content


def test_login_with_right_password_reaches_overview(client, owner):
    response = client.post(
        reverse("login"), {"username": "owner", "password": "owner-pass-123"}, follow=True
    )
    assert response.redirect_chain[-1][0] == reverse("dashboard:overview")
    assert b"Overview" in response.content and b"owner" in response.content


def test_login_with_wrong_password_says_so(client, owner):
    response = client.post(reverse("login"), {"username": "owner", "password": "nope"})
    assert response.status_code == 200
    assert b"Please enter a correct username and password" in response.content
    assert "_auth_user_id" not in client.session


def test_logout_is_post_only_and_logs_out(owner_client):
    assert owner_client.get(reverse("logout")).status_code == 405
    response = owner_client.post(reverse("logout"))
    assert response.status_code == 302
    assert owner_client.get("/").status_code == 302


def test_logout_requires_csrf_token(owner):
    from django.test import Client

    client = Client(enforce_csrf_checks=True)
    client.force_login(owner)
    assert client.post(reverse("logout")).status_code == 403


def test_overview_shows_system_status(owner_client):
    response = owner_client.get("/")
    assert response.status_code == 200
    content = response.content.decode()
    for part in ("Database", "Redis", "Workers", "Conductor"):
        assert part in content


@pytest.mark.parametrize("path", ["/admin/", "/rq/"])
def test_admin_and_queues_are_staff_only(client, owner, staff, path):
    client.force_login(owner)
    assert client.get(path).status_code == 302  # to the admin login: not staff
    client.force_login(staff)
    assert client.get(path).status_code == 200


def test_unknown_page_renders_the_product_404(owner_client, settings):
    settings.DEBUG = False
    response = owner_client.get("/no-such-page/")
    assert response.status_code == 404
    assert b"Nothing here" in response.content


def test_security_headers_are_set(owner_client):
    response = owner_client.get("/")
    assert response["X-Frame-Options"] == "DENY"
    assert response["X-Content-Type-Options"] == "nosniff"
    assert response["Referrer-Policy"] == "same-origin"


def test_staff_see_admin_and_queue_links(client, staff):
    client.force_login(staff)
    content = client.get("/").content.decode()
    assert 'href="/admin/"' in content and 'href="/rq/"' in content


def test_non_staff_do_not_see_admin_links(owner_client):
    content = owner_client.get("/").content.decode()
    assert 'href="/admin/"' not in content and 'href="/rq/"' not in content
