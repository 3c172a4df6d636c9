"""The security pass (docs/security.md): CSRF, headers, cookies, limits, fuzzing, no pickle."""

import json
import subprocess
import sys
import zlib

import pytest
import schemathesis
from django.core.handlers.wsgi import WSGIHandler
from django.test import Client
from django.urls import reverse
from hypothesis import HealthCheck, given, settings as hypothesis_settings, strategies as st

from dashboard import schedules
from dashboard.forms import ProjectForm
from dashboard.middleware import POLICY
from dashboard.models import ApiToken, Crawl, Item
from tests.dashboard.factories import definition, project_for


# -- CSRF ------------------------------------------------------------------------------------------

@pytest.mark.django_db
def test_every_form_rejects_a_post_without_csrf_token(owner):
    project = project_for(owner)
    crawl = Crawl.objects.create(project=project, definition=project.definition, status=Crawl.RUNNING)
    client = Client(enforce_csrf_checks=True)
    client.force_login(owner)
    posts = [
        reverse("dashboard:project-create"),
        reverse("dashboard:project-edit", args=[project.code]),
        reverse("dashboard:project-delete", args=[project.code]),
        reverse("dashboard:project-launch", args=[project.code]),
        reverse("dashboard:crawl-xlsx-request", args=[crawl.code]),
        reverse("dashboard:project-import"),
        reverse("dashboard:project-form-preview"),
        reverse("dashboard:project-preview", args=[project.code]),
        reverse("logout"),
    ] + [reverse("dashboard:crawl-control", args=[crawl.code, a]) for a in ("pause", "resume", "stop", "cancel", "scale")]
    for url in posts:
        assert client.post(url, {"workers": "1", "name": "x"}).status_code == 403, url
    crawl.refresh_from_db()
    assert crawl.status == Crawl.RUNNING
    assert Crawl.objects.count() == 1


@pytest.mark.django_db
def test_login_form_needs_csrf_token(owner):
    client = Client(enforce_csrf_checks=True)
    response = client.post(reverse("login"), {"username": "owner", "password": "owner-pass-123"})
    assert response.status_code == 403


# -- headers and cookies -----------------------------------------------------------------------------

@pytest.mark.django_db
def test_content_security_policy_is_strict(owner_client, owner):
    project = project_for(owner)
    crawl = Crawl.objects.create(project=project, definition=project.definition, status=Crawl.FINISHED)
    for url in ("/", "/projects/", crawl.get_absolute_url(), reverse("dashboard:crawl-items", args=[crawl.code]), "/accounts/login/"):
        policy = owner_client.get(url)["Content-Security-Policy"]
        assert policy == POLICY
        assert "script-src 'self';" in policy and "unsafe-inline" not in policy.split("script-src")[1].split(";")[0]
        assert "frame-ancestors 'none'" in policy and "object-src 'none'" in policy


@pytest.mark.django_db
def test_pages_have_no_inline_scripts(owner_client, owner):
    """The CSP would block them; data goes through json_script blocks (not executable)."""
    import re

    project = project_for(owner)
    crawl = Crawl.objects.create(project=project, definition=project.definition, status=Crawl.FINISHED)
    for url in ("/", "/projects/", project.get_absolute_url(), crawl.get_absolute_url(), "/projects/new/",
                reverse("dashboard:project-edit", args=[project.code]),
                reverse("dashboard:crawl-items", args=[crawl.code]), "/api/docs",
                reverse("dashboard:crawl-xlsx", args=[crawl.code, 1])):
        html = owner_client.get(url).content.decode()
        for tag in re.findall(r"<script\b[^>]*>", html):
            assert "src=" in tag or 'type="application/json"' in tag, (url, tag)
        assert not re.search(r"\son[a-z]+\s*=", html), url  # no inline event handlers


def test_cookies_are_secure_behind_https(tmp_path):
    code = (
        "import django, os; os.environ['DJANGO_SETTINGS_MODULE']='crawlsite.settings'; django.setup();"
        "from django.conf import settings as s;"
        "print(s.SESSION_COOKIE_SECURE, s.CSRF_COOKIE_SECURE, s.SESSION_COOKIE_HTTPONLY,"
        " s.SECURE_PROXY_SSL_HEADER, s.SECURE_HSTS_SECONDS, s.SESSION_COOKIE_SAMESITE)"
    )
    env = {"PATH": "/usr/bin:/bin", "SECURE_HTTPS": "1", "SECURE_HSTS_SECONDS": "3600", "BEHIND_PROXY": "1",
           "CRAWLSITE_VAR_DIR": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.split() == ["True", "True", "True", "('HTTP_X_FORWARDED_PROTO',", "'https')", "3600", "Lax"]


# -- limits ------------------------------------------------------------------------------------------

@pytest.mark.django_db
def test_oversized_api_body_is_refused(client, owner, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 10_000
    token = ApiToken.issue(owner)
    body = json.dumps(definition(start_urls=["http://127.0.0.1:9/?" + "x" * 20_000]))
    response = client.post("/api/projects", body, content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {token}")
    assert response.status_code in (400, 413)
    assert not owner.projects.exists()


def test_definition_limits_are_enforced():
    from crawler.definition import DefinitionError, validate

    with pytest.raises(DefinitionError) as info:
        validate(definition(start_urls=[f"http://127.0.0.1:9/{i}" for i in range(1001)]))
    assert "start_urls" in info.value.errors
    fields = [{"name": f"f{i}", "selector": "h1::text", "many": False} for i in range(101)]
    with pytest.raises(DefinitionError) as info:
        validate(definition(item={"fields": fields}))
    assert any(path.startswith("item.fields") for path in info.value.errors)


# -- fuzzing -----------------------------------------------------------------------------------------

FORM_FIELDS = list(ProjectForm.base_fields)


@pytest.mark.django_db
@hypothesis_settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.dictionaries(st.sampled_from(FORM_FIELDS), st.text(max_size=200)))
def test_form_never_crashes_on_random_input(data):
    form = ProjectForm(data)
    if form.is_valid():
        assert form.cleaned_data["definition"]["start_urls"]
    else:
        assert set(form.errors) <= set(FORM_FIELDS) | {"__all__"}
        assert all(messages for messages in form.errors.values())


def _api_schema():
    """The schema the API publishes at /api/openapi.json (behind login), served in-process."""
    from dashboard.api import api

    schema = schemathesis.openapi.from_dict(api.get_openapi_schema(path_prefix="/api"))
    schema.app = WSGIHandler()
    return schema


API_SCHEMA = _api_schema()


@pytest.fixture
def fuzz_world(db, owner):
    project = project_for(owner, "Fuzzed")
    crawl = Crawl.objects.create(project=project, definition=project.definition, status=Crawl.FINISHED)
    Item.objects.create(crawl=crawl, key="k", url="http://127.0.0.1:9/p", data={"url": "http://127.0.0.1:9/p", "t": "x"})
    schedule = schedules.create(project, schedules.validate({"cron": "@daily"}))
    return {"token": ApiToken.issue(owner), "project_id": project.code, "code": crawl.code,
            "schedule_id": schedule.code, "calls": [0]}


@pytest.mark.django_db
@API_SCHEMA.parametrize()
@hypothesis_settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
def test_api_fuzzed_against_its_schema_never_answers_500(case, fuzz_world):
    case.headers = {**(case.headers or {}), "Authorization": f"Bearer {fuzz_world['token']}"}
    # Every other call aims at objects that exist, so the fuzzing reaches past the 404s.
    fuzz_world["calls"][0] += 1
    if fuzz_world["calls"][0] % 2 and case.path_parameters:
        for name in ("project_id", "code", "schedule_id"):
            if name in case.path_parameters:
                case.path_parameters[name] = fuzz_world[name]
    response = case.call()
    import os
    if os.environ.get("FUZZ_TRACE"):
        print("FUZZ", case.method, case.path, response.status_code)
    assert response.status_code < 500, (case.method, case.path, case.body, response.status_code)


# -- nothing executable in Redis -------------------------------------------------------------------

PICKLE_PREFIXES = (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05")


def _values(redis, key):
    kind = redis.type(key)
    if kind == b"string":
        yield redis.get(key)
    elif kind == b"hash":
        yield from redis.hvals(key)
    elif kind == b"list":
        yield from redis.lrange(key, 0, -1)
    elif kind == b"zset":
        yield from redis.zrange(key, 0, -1)
    elif kind == b"set":
        yield from redis.smembers(key)
    elif kind == b"stream":
        for _id, fields in redis.xrange(key):
            yield from fields.values()


@pytest.mark.django_db(transaction=True)
def test_nothing_in_redis_is_pickled(owner):
    """After a real launch (definition, seeds, RQ jobs), no value in Redis is a pickle."""
    import redis as redis_lib
    from django.conf import settings

    from dashboard import engine, jobs

    project = project_for(owner)
    engine.launch(project, workers=2)
    raw = redis_lib.Redis.from_url(settings.REDIS_URL)
    checked = 0
    for key in raw.scan_iter(count=1000):
        for value in _values(raw, key):
            if not isinstance(value, bytes):
                continue
            try:
                value = zlib.decompress(value)  # RQ compresses job data
            except zlib.error:
                pass
            assert not value.startswith(PICKLE_PREFIXES), key
            checked += 1
    assert checked > 5
    job = raw.hget(f"rq:job:{jobs.job_id(project.crawls.get().code, 'w1')}".encode(), "data")
    assert json.loads(zlib.decompress(job))  # the job's call is JSON


# -- hostile content in the item browser, server side (the browser test runs it for real) --------

@pytest.mark.django_db
def test_hostile_item_values_render_as_text(owner_client, owner):
    project = project_for(owner)
    crawl = Crawl.objects.create(project=project, definition=project.definition, status=Crawl.FINISHED)
    hostile = '<img src=x onerror="alert(1)"><script>alert(2)</script><a href="javascript:alert(3)">x</a>'
    Item.objects.create(crawl=crawl, key="k", url="http://127.0.0.1:9/p", data={"url": "http://127.0.0.1:9/p", "title": hostile})
    for url in (reverse("dashboard:crawl-items", args=[crawl.code]), crawl.get_absolute_url()):
        html = owner_client.get(url).content.decode()
        assert "<script>alert(2)" not in html and 'onerror="alert(1)"' not in html
        assert 'href="javascript:' not in html
