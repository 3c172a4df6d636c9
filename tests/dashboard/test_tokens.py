"""API tokens (issue 11): users list, create and revoke their own, on the account page and in the
API; tokens may expire; a password change revokes them all."""

import hashlib
import json
from datetime import timedelta

import pytest
from django.core.management import CommandError, call_command
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from dashboard.models import ApiToken

pytestmark = pytest.mark.django_db

BAD_EXPIRIES = ["tomorrow", "0d", "0h", "3651d", "30D", "1.5d", "-1d", "30", "٣d", " 30d", "30d ", "d", 30, None, True]
BAD_NAMES = ["", "   ", "x" * 101, "line\nbreak", "nul\x00", "bidi\u202eevil"]


def bearer(token):
    return {"HTTP_AUTHORIZATION": f"Bearer {token}"}


def api(client, method, path, data=None, **extra):
    call = getattr(client, method)
    if data is None:
        return call(path, **extra)
    return call(path, json.dumps(data), content_type="application/json", **extra)


def works(token):
    return Client().get("/api/projects", **bearer(token)).status_code == 200


# -- API ------------------------------------------------------------------------------------------

def test_anonymous_cannot_use_the_token_api(client, owner):
    token = ApiToken.objects.get(digest=ApiToken.hash(ApiToken.issue(owner)))
    assert client.get("/api/tokens").status_code == 401
    assert api(client, "post", "/api/tokens", {"name": "x"}).status_code == 401
    assert client.delete(f"/api/tokens/{token.public_id}").status_code == 401
    assert ApiToken.objects.filter(pk=token.pk).exists()


def test_create_list_use_and_revoke_a_token_through_the_api(owner):
    client = Client(**bearer(ApiToken.issue(owner, name="bootstrap")))
    response = api(client, "post", "/api/tokens", {"name": "nightly export", "expires": "30d"})
    assert response.status_code == 201
    made = response.json()
    secret = made["token"]
    assert secret.startswith("cs_") and made["prefix"] == secret[:8] and made["name"] == "nightly export"
    assert made["id"].startswith("tok_") and not made["id"][4:].isdigit()
    expires = timezone.datetime.fromisoformat(made["expires_at"])
    assert timedelta(days=29, hours=23) < expires - timezone.now() <= timedelta(days=30)
    # Stored as a hash only.
    row = ApiToken.objects.get(public_id=made["id"])
    assert row.digest == hashlib.sha256(secret.encode()).hexdigest()
    assert secret not in json.dumps(list(ApiToken.objects.values()), default=str)

    assert works(secret)
    listed = client.get("/api/tokens").json()
    assert [t["name"] for t in listed] == ["nightly export", "bootstrap"]
    assert all("token" not in t and "digest" not in t for t in listed)
    assert listed[0]["last_used_at"] is not None and listed[0]["expired"] is False

    assert client.delete(f"/api/tokens/{made['id']}").status_code == 204
    refused = Client().get("/api/projects", **bearer(secret))
    assert refused.status_code == 401 and refused.json()["detail"] == "Unknown or revoked API token."
    assert client.delete(f"/api/tokens/{made['id']}").status_code == 404


def test_owners_see_and_revoke_only_their_own_tokens(owner, outsider):
    theirs = ApiToken.issue(outsider, name="outsider's script")
    their_row = ApiToken.objects.get(digest=ApiToken.hash(theirs))
    client = Client(**bearer(ApiToken.issue(owner)))
    assert "outsider's script" not in client.get("/api/tokens").content.decode()
    assert client.delete(f"/api/tokens/{their_row.public_id}").status_code == 404
    assert client.delete(f"/api/tokens/{their_row.pk}").status_code == 404  # integer ids mean nothing
    assert works(theirs)


def test_expired_token_is_refused_with_a_clear_401(owner):
    row, secret = ApiToken.create_for(owner, "short-lived", timedelta(hours=1))
    assert works(secret)
    ApiToken.objects.filter(pk=row.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    response = Client().get("/api/projects", **bearer(secret))
    assert response.status_code == 401
    assert "expired" in response.json()["detail"] and "“short-lived”" in response.json()["detail"]
    assert ApiToken.objects.get(pk=row.pk).is_expired
    assert Client(**bearer(ApiToken.issue(owner))).get("/api/tokens").json()[1]["expired"] is True


@pytest.mark.parametrize("expires", BAD_EXPIRIES)
def test_unknown_expiry_formats_are_422(owner, expires):
    client = Client(**bearer(ApiToken.issue(owner)))
    response = api(client, "post", "/api/tokens", {"name": "x", "expires": expires})
    assert response.status_code == 422, response.content
    assert ApiToken.objects.count() == 1


@pytest.mark.parametrize("name", BAD_NAMES + [None, 5])
def test_bad_token_names_are_422(owner, name):
    client = Client(**bearer(ApiToken.issue(owner)))
    response = api(client, "post", "/api/tokens", {"name": name})
    assert response.status_code == 422, response.content
    assert ApiToken.objects.count() == 1


def test_a_token_cannot_mint_one_that_outlives_it(owner):
    _row, secret = ApiToken.create_for(owner, "7 days", timedelta(days=7))
    client = Client(**bearer(secret))
    for expires in ("never", "30d"):
        response = api(client, "post", "/api/tokens", {"name": "longer", "expires": expires})
        assert response.status_code == 422 and "expire no later" in response.json()["detail"]
    assert api(client, "post", "/api/tokens", {"name": "shorter", "expires": "1d"}).status_code == 201


def test_tokens_per_user_are_capped(owner, monkeypatch):
    monkeypatch.setattr(ApiToken, "MAX_PER_USER", 2)
    client = Client(**bearer(ApiToken.issue(owner)))
    assert api(client, "post", "/api/tokens", {"name": "second"}).status_code == 201
    response = api(client, "post", "/api/tokens", {"name": "third"})
    assert response.status_code == 422 and "revoke some first" in response.json()["detail"]


def test_session_token_calls_need_csrf(owner):
    client = Client(enforce_csrf_checks=True)
    client.force_login(owner)
    assert api(client, "post", "/api/tokens", {"name": "x"}).status_code in (401, 403)
    assert not ApiToken.objects.exists()


# -- account page ---------------------------------------------------------------------------------

def test_account_pages_need_login(client, owner):
    row, _ = ApiToken.create_for(owner, "mine")
    for method, url in [("get", reverse("dashboard:account")), ("post", reverse("dashboard:account-token-create")),
                        ("post", reverse("dashboard:account-token-revoke", args=[row.public_id])),
                        ("get", reverse("password_change"))]:
        response = getattr(client, method)(url)
        assert response.status_code == 302 and response["Location"].startswith("/accounts/login/"), url
    assert ApiToken.objects.count() == 1


def test_layout_links_to_the_account_page(owner_client):
    assert f'href="{reverse("dashboard:account")}"' in owner_client.get("/").content.decode()


def test_create_on_the_account_page_shows_the_secret_once(owner_client, owner, outsider):
    ApiToken.create_for(outsider, "outsider's script")
    response = owner_client.post(reverse("dashboard:account-token-create"), {"name": "laptop", "expires": "7d"})
    assert response.status_code == 200
    assert response["Cache-Control"].startswith("max-age=0") and "no-store" in response["Cache-Control"]
    page = response.content.decode()
    row = ApiToken.objects.get(user=owner)
    secret = page.split("data-token-secret>")[1].split("<")[0]
    assert row.digest == ApiToken.hash(secret) and works(secret)
    assert row.name == "laptop" and timedelta(days=6) < row.expires_at - timezone.now() <= timedelta(days=7)
    again = owner_client.get(reverse("dashboard:account")).content.decode()
    assert secret not in again and "laptop" in again and row.prefix in again
    assert "outsider's script" not in again


@pytest.mark.parametrize("data", [{"name": "x" * 101, "expires": "never"}, {"name": "ok", "expires": "5y"},
                                  {"name": "", "expires": "never"}, {"name": "a\nb", "expires": "never"}, {}])
def test_account_page_refuses_bad_input_with_a_form_error(owner_client, data):
    response = owner_client.post(reverse("dashboard:account-token-create"), data)
    assert response.status_code == 200 and "errorlist" in response.content.decode()
    assert not ApiToken.objects.exists()


def test_revoke_on_the_account_page(owner_client, owner, outsider):
    mine, secret = ApiToken.create_for(owner, "old laptop")
    theirs, their_secret = ApiToken.create_for(outsider, "theirs")
    assert owner_client.post(reverse("dashboard:account-token-revoke", args=[theirs.public_id])).status_code == 404
    assert owner_client.get(reverse("dashboard:account-token-revoke", args=[mine.public_id])).status_code == 405
    response = owner_client.post(reverse("dashboard:account-token-revoke", args=[mine.public_id]), follow=True)
    assert "Token “old laptop”" in response.content.decode() and "revoked" in response.content.decode()
    assert not works(secret) and works(their_secret)


def test_account_forms_need_csrf(owner):
    row, secret = ApiToken.create_for(owner, "mine")
    client = Client(enforce_csrf_checks=True)
    client.force_login(owner)
    page = client.get(reverse("dashboard:account")).content.decode()
    assert page.count("csrfmiddlewaretoken") >= 2
    assert client.post(reverse("dashboard:account-token-create"), {"name": "x", "expires": "never"}).status_code == 403
    assert client.post(reverse("dashboard:account-token-revoke", args=[row.public_id])).status_code == 403
    assert ApiToken.objects.count() == 1 and works(secret)


# -- a password change revokes every token --------------------------------------------------------

def tokens_of(user, count=2):
    return [ApiToken.issue(user, name=f"t{i}") for i in range(count)]


def test_password_change_page_revokes_tokens_and_keeps_the_session(owner_client, owner):
    secrets = tokens_of(owner)
    response = owner_client.post(reverse("password_change"), {
        "old_password": "owner-pass-123", "new_password1": "a-new-long-pass-4", "new_password2": "a-new-long-pass-4",
    }, follow=True)
    assert response.redirect_chain[-1][0] == reverse("dashboard:account")
    assert "Your API tokens were revoked" in response.content.decode()
    assert not any(works(s) for s in secrets) and not ApiToken.objects.exists()
    assert owner_client.get("/").status_code == 200


def test_set_password_and_save_revokes_tokens(owner, outsider):
    secrets, others = tokens_of(owner), tokens_of(outsider)
    owner.set_password("another-pass-5")
    owner.save()
    assert not any(works(s) for s in secrets) and all(works(s) for s in others)


def test_changepassword_command_revokes_tokens(owner, monkeypatch):
    from django.contrib.auth.management.commands import changepassword

    secrets = tokens_of(owner)
    monkeypatch.setattr(changepassword.Command, "_get_pass", lambda self, prompt="": "cmd-line-pass-6")
    call_command("changepassword", "owner")
    assert not any(works(s) for s in secrets)


def test_admin_password_change_revokes_tokens(client, staff, owner):
    staff.is_superuser = True
    staff.save()
    client.force_login(staff)
    secrets = tokens_of(owner)
    response = client.post(f"/admin/auth/user/{owner.pk}/password/",
                           {"password1": "admin-set-pass-7", "password2": "admin-set-pass-7", "usable_password": "true"})
    assert response.status_code == 302, response.content[:500]
    assert not any(works(s) for s in secrets)


def test_saving_a_user_without_a_new_password_keeps_tokens(owner, client, settings):
    secrets = tokens_of(owner)
    owner.first_name = "Ann"
    owner.save()
    # A login that upgrades the stored hash saves the password field too: tokens stay.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.PBKDF2PasswordHasher",
                                 "django.contrib.auth.hashers.MD5PasswordHasher"]
    assert client.post(reverse("login"), {"username": "owner", "password": "owner-pass-123"}).status_code == 302
    owner.refresh_from_db()
    assert owner.password.startswith("pbkdf2_")
    assert all(works(s) for s in secrets)


# -- the command ----------------------------------------------------------------------------------

def test_apitoken_command_takes_a_name_and_an_expiry(owner, capsys):
    call_command("apitoken", "owner", "--name", "cron job", "--expires", "12h")
    secret = capsys.readouterr().out.strip()
    row = ApiToken.objects.get(digest=ApiToken.hash(secret))
    assert row.name == "cron job" and timedelta(hours=11) < row.expires_at - timezone.now() <= timedelta(hours=12)
    assert works(secret)


@pytest.mark.parametrize("args,message", [(["--expires", "soon"], "Unknown expiry"),
                                          (["--name", "x" * 101], "at most 100"),
                                          ([], None)])
def test_apitoken_command_refuses_bad_input(owner, args, message):
    if message is None:
        with pytest.raises(CommandError, match="No active user named 'nobody'"):
            call_command("apitoken", "nobody")
        return
    with pytest.raises(CommandError, match=message):
        call_command("apitoken", "owner", *args)
    assert not ApiToken.objects.exists()


def test_admin_lists_tokens_without_secrets_and_cannot_add_one(client, staff, owner):
    staff.is_superuser = True
    staff.save()
    client.force_login(staff)
    row, secret = ApiToken.create_for(owner, "listed in admin")
    page = client.get("/admin/dashboard/apitoken/").content.decode()
    assert "listed in admin" in page and secret not in page
    assert client.get("/admin/dashboard/apitoken/add/").status_code == 403
    assert secret not in client.get(f"/admin/dashboard/apitoken/{row.pk}/change/").content.decode()
