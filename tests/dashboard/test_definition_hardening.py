"""Issue 11, the definition: nothing a user types is imported, regexes run on RE2, sizes are
bounded, control characters are refused. Through the API (over a real server where the process
must survive) and the form."""

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request

import pytest
from django.urls import reverse

from crawler.registry import SpiderRegistryError, parse_spiders
from dashboard import engine
from dashboard.forms import ProjectForm
from dashboard.models import ApiToken, Project
from tests.dashboard.factories import definition, project_for
from tests.plugins.installed_spiders import TEST_SPIDERS
from tests.servers import ThreadedServer

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Modules whose import does harm (SystemExit, a browser opening, a poem printed) or that the
# test controls (the probe): naming them must import nothing.
HOSTILE = {
    "unittest.__main__.X": "unittest.__main__",
    "os.system": None,
    "antigravity.X": "antigravity",
    "this.X": "this",
    "tests.crawler.import_probe.X": "tests.crawler.import_probe",
    "tests.crawler.import_probe.ProbeSpider": "tests.crawler.import_probe",
}


def post_json(client, path, data, **extra):
    return client.post(path, json.dumps(data), content_type="application/json", **extra)


@pytest.fixture
def auth(owner):
    return {"HTTP_AUTHORIZATION": f"Bearer {ApiToken.issue(owner)}"}


def form_data(**overrides):
    data = {
        "name": "Books", "start_urls": "http://127.0.0.1:9/", "allowed_domains": "",
        "follow_allow": "", "follow_deny": "", "max_depth": "0", "max_pages": "0", "max_items": "0",
        "max_duration": "0", "item_url_pattern": "", "item_selector": "", "fields": "title: h1::text",
        "spider": "", "settings": "", "workers": "1",
    }
    data.update(overrides)
    return data


# -- spiders by name -------------------------------------------------------------------------------

def _api(server, method, path, token, body=None):
    request = urllib.request.Request(server.url + path, method=method, headers={
        "Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        data=json.dumps(body).encode() if body is not None else None)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


@pytest.mark.django_db(transaction=True)
def test_hostile_spider_paths_are_refused_and_nothing_is_imported(owner):
    """Over a real ASGI server: ``unittest.__main__.X`` once raised SystemExit in the web
    process. Every hostile value answers 422 naming ``spider``, the server keeps serving, and
    none of the modules was imported."""
    modules = {m for m in HOSTILE.values() if m}
    assert not modules & set(sys.modules), "precondition: not imported yet"
    token = ApiToken.issue(owner)
    server = ThreadedServer().start()
    try:
        for value in HOSTILE:
            status, body = _api(server, "POST", "/api/projects", token,
                                definition(f"p {value}", spider=value, item={"fields": []}))
            assert status == 422, (value, body)
            message = " ".join(body["errors"]["spider"])
            assert "Available: " + ", ".join(sorted(TEST_SPIDERS)) in message, message
        # a project stored before spiders were chosen by name: launching it imports nothing either
        old = Project.objects.create(owner=owner, name="Old", definition={
            **definition("Old", item={"fields": []}), "spider": "tests.crawler.import_probe.ProbeSpider"})
        status, body = _api(server, "POST", f"/api/projects/{old.code}/crawls", token, {})
        assert status == 422 and "by name" in body["detail"], body
        status, body = _api(server, "GET", "/api/projects", token)
        assert status == 200 and len(body) == 1  # still serving
    finally:
        server.stop()
    assert not modules & set(sys.modules)
    assert not old.crawls.exists()


@pytest.mark.django_db
@pytest.mark.parametrize("value", list(HOSTILE))
def test_hostile_spider_paths_are_a_form_error(owner_client, value):
    response = owner_client.post(reverse("dashboard:project-create"), form_data(spider=value, fields=""))
    assert response.status_code == 200
    form = response.context["form"]
    assert "spider" in form.errors
    assert not Project.objects.exists()
    assert HOSTILE[value] is None or HOSTILE[value] not in sys.modules


@pytest.mark.django_db
def test_the_form_offers_the_installed_spiders(owner_client, settings):
    page = owner_client.get(reverse("dashboard:project-create")).content.decode()
    assert '<option value="shop">shop</option>' in page and "not-a-spider" in page
    assert TEST_SPIDERS["shop"] not in page  # the operator's dotted paths stay private
    response = owner_client.post(reverse("dashboard:project-create"), form_data(spider="shop", fields=""))
    assert response.status_code == 302
    assert Project.objects.get().definition["spider"] == "shop"

    settings.CRAWLSITE_SPIDERS = {}
    page = owner_client.get(reverse("dashboard:project-create")).content.decode()
    assert "No custom spiders are installed" in page and '<option value="shop">' not in page


@pytest.mark.django_db
def test_an_old_dotted_path_shows_as_not_installed_and_cannot_be_saved(owner_client, owner):
    project = Project.objects.create(owner=owner, name="Old", definition={
        **definition("Old", item={"fields": []}), "spider": "myproject.spiders.Old"})
    url = reverse("dashboard:project-edit", args=[project.code])
    page = owner_client.get(url).content.decode()
    assert "myproject.spiders.Old (not installed)" in page
    response = owner_client.post(url, {**ProjectForm.initial_from(project.definition), "name": "Old"})
    errors = response.context["form"].errors["spider"]
    assert any("chosen by name" in e and "shop" in e for e in errors), errors
    response = owner_client.post(reverse("dashboard:project-launch", args=[project.code]), follow=True)
    assert "chosen by name" in response.content.decode()
    assert not project.crawls.exists()


@pytest.mark.django_db
def test_launch_freezes_the_operators_path_and_item_limit(owner, settings):
    settings.CRAWLSITE_MAX_ITEM_BYTES = 5000
    project = project_for(owner, spider="shop", item={"fields": []})
    assert "operator" not in project.definition  # the project holds the name only
    crawl = engine.launch(project)
    assert crawl.definition["spider"] == "shop"
    assert crawl.definition["operator"] == {"spider_class": TEST_SPIDERS["shop"], "max_item_bytes": 5000}


@pytest.mark.django_db
def test_users_cannot_set_the_operator_section(client, auth):
    response = post_json(client, "/api/projects", definition(
        operator={"spider_class": "tests.crawler.import_probe.X", "max_item_bytes": 10 ** 12}), **auth)
    assert response.status_code == 422 and "operator" in response.json()["errors"]


@pytest.mark.django_db
def test_api_lists_installed_spider_names_to_logged_in_users_only(client, auth):
    assert client.get("/api/spiders").status_code == 401
    response = client.get("/api/spiders", **auth)
    assert response.status_code == 200 and response.json() == {"spiders": sorted(TEST_SPIDERS)}


@pytest.mark.parametrize("text, needle", [
    ("shop", "entry 1 ('shop')"),
    ("shop=a.B,bad name=a.B", "entry 2"),
    ("shop=a.B,news=not a path", "'not a path' is not a dotted path"),
    ("shop=a.B,shop=a.C", "given twice"),
    ("shop=Spider", "not a dotted path"),
])
def test_malformed_spider_settings_name_the_entry(text, needle):
    with pytest.raises(SpiderRegistryError, match="CRAWLSITE_SPIDERS") as info:
        parse_spiders(text)
    assert needle in str(info.value)


def test_parsing_the_spider_setting_imports_nothing():
    assert parse_spiders(" shop = tests.crawler.import_probe.ProbeSpider ,, news=a.b.News") == {
        "shop": "tests.crawler.import_probe.ProbeSpider", "news": "a.b.News"}
    assert "tests.crawler.import_probe" not in sys.modules


def test_a_bad_spider_setting_stops_startup_with_a_clear_error(tmp_path):
    env = dict(os.environ, CRAWLSITE_SPIDERS="shop=ok.Spider,broken", DJANGO_SETTINGS_MODULE="crawlsite.settings",
               CRAWLSITE_VAR_DIR=str(tmp_path))
    result = subprocess.run([sys.executable, "-c", "import django; django.setup()"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr and "entry 2 ('broken')" in result.stderr


@pytest.mark.django_db
def test_the_migration_turns_installed_dotted_paths_into_names(owner):
    import importlib

    from django.apps import apps

    migration = importlib.import_module("dashboard.migrations.0004_spiders_by_name")
    known = Project.objects.create(owner=owner, name="Known", definition={"name": "Known", "spider": TEST_SPIDERS["shop"]})
    unknown = Project.objects.create(owner=owner, name="Unknown", definition={"name": "Unknown", "spider": "x.y.Z"})
    running = known.crawls.create(definition=dict(known.definition), status="running")
    migration.forwards(apps, None)
    known.refresh_from_db(), unknown.refresh_from_db(), running.refresh_from_db()
    assert known.definition["spider"] == "shop"
    assert unknown.definition["spider"] == "x.y.Z"  # refused with a clear message when next used
    assert running.definition["spider"] == "shop"
    assert running.definition["operator"]["spider_class"] == TEST_SPIDERS["shop"]


# -- regexes ---------------------------------------------------------------------------------------

@pytest.mark.django_db
def test_regexes_re2_cannot_run_are_refused_naming_the_field(client, auth):
    response = post_json(client, "/api/projects", definition(
        follow={"allow": ["/ok/", r"(a)\1"], "deny": ["(?=x)"]},
        item={"url_pattern": "(?<!a)b", "fields": [{"name": "t", "selector": "h1"}]}), **auth)
    assert response.status_code == 422
    errors = response.json()["errors"]
    assert set(errors) == {"follow.allow.1", "follow.deny.0", "item.url_pattern"}, errors
    assert all("not supported" in m[0] for m in errors.values()), errors
    assert not Project.objects.exists()


@pytest.mark.django_db
def test_regexes_re2_cannot_run_are_a_form_error_with_the_line(owner_client):
    response = owner_client.post(reverse("dashboard:project-create"), form_data(follow_allow="/ok/\n(?!private)"))
    errors = response.context["form"].errors["follow_allow"]
    assert any(e.startswith("Line 2:") and "not supported" in e for e in errors), errors
    assert not Project.objects.exists()


@pytest.mark.django_db
def test_a_catastrophic_pattern_is_accepted_it_runs_in_linear_time(client, auth):
    response = post_json(client, "/api/projects", definition(follow={"allow": ["(a+)+$"]}), **auth)
    assert response.status_code == 201
    assert response.json()["definition"]["follow"]["allow"] == ["(a+)+$"]


# -- sizes -----------------------------------------------------------------------------------------

@pytest.mark.django_db
@pytest.mark.parametrize("value, message", [
    (0, "0 (no limit) is not allowed"), (10 ** 12, "between 1024 and"), (-1, "between 1024 and"),
    ("32MB", "integer"),
])
def test_download_maxsize_is_bounded_and_never_unlimited(client, auth, value, message):
    response = post_json(client, "/api/projects", definition(settings={"DOWNLOAD_MAXSIZE": value}), **auth)
    assert response.status_code == 422
    assert message in response.json()["errors"]["settings.DOWNLOAD_MAXSIZE"][0]


@pytest.mark.django_db
def test_download_maxsize_zero_is_a_form_error(owner_client):
    response = owner_client.post(reverse("dashboard:project-create"), form_data(settings="DOWNLOAD_MAXSIZE = 0"))
    errors = response.context["form"].errors["settings"]
    assert any("DOWNLOAD_MAXSIZE" in e and "no limit" in e for e in errors), errors


def test_the_item_size_setting_is_bounded(tmp_path):
    env = dict(os.environ, CRAWLSITE_MAX_ITEM_BYTES="0", DJANGO_SETTINGS_MODULE="crawlsite.settings",
               CRAWLSITE_VAR_DIR=str(tmp_path))
    result = subprocess.run([sys.executable, "-c", "import django; django.setup()"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "CRAWLSITE_MAX_ITEM_BYTES=0 is below the minimum" in result.stderr


# -- control characters ----------------------------------------------------------------------------

@pytest.mark.django_db
@pytest.mark.parametrize("bad", ["bot\r\nX-Injected: 1", "bot\x00", "bot\x1b[31m", "bot\x85", "bot\t1"])
def test_control_characters_are_refused_in_string_settings_and_the_name(client, auth, bad):
    response = post_json(client, "/api/projects", definition(name=f"Shop {bad}", settings={"USER_AGENT": bad}), **auth)
    assert response.status_code == 422
    errors = response.json()["errors"]
    assert set(errors) == {"name", "settings.USER_AGENT"}, errors
    assert all("Control characters are not allowed" in m[0] for m in errors.values())
    assert not Project.objects.exists()


@pytest.mark.django_db
def test_control_characters_are_a_form_error(owner_client):
    # a JSON string value in the settings box can carry CR/LF; the name can carry ESC or BEL
    response = owner_client.post(reverse("dashboard:project-create"), form_data(
        name="Sh\x1bop", settings='USER_AGENT = "bot\\r\\nX-Injected: 1"'))
    errors = response.context["form"].errors
    assert any("Control characters" in e and "U+001B" in e for e in errors["name"]), errors
    assert any(e.startswith("USER_AGENT:") and "U+000D" in e for e in errors["settings"]), errors
    assert not Project.objects.exists()


@pytest.mark.django_db
def test_a_plain_user_agent_is_kept(client, auth):
    response = post_json(client, "/api/projects", definition(settings={"USER_AGENT": "Crawlsite/1.0 (+https://x.test/bot)"}), **auth)
    assert response.status_code == 201


@pytest.mark.django_db
def test_items_too_large_show_next_to_errors_in_the_api_and_the_page(owner_client, owner, auth, client):
    from crawler import keys
    from crawler.counters import ITEMS_TOO_LARGE
    from dashboard.models import Crawl
    from dashboard.redis import get_redis

    project = project_for(owner)
    crawl = Crawl.objects.create(project=project, definition=project.definition, status=Crawl.RUNNING)
    get_redis().hset(keys.stats(crawl.code), mapping={ITEMS_TOO_LARGE: 3, "errors": 1})
    counters = client.get(f"/api/crawls/{crawl.code}", **auth).json()["counters"]
    assert counters["items_too_large"] == 3 and counters["errors"] == 1
    page = owner_client.get(crawl.get_absolute_url()).content.decode()
    assert 'data-counter="items_too_large">3<' in page


@pytest.mark.django_db
def test_a_lone_surrogate_in_a_regex_is_a_422_not_a_500(client, auth):
    body = json.dumps(definition(follow={"allow": ["ok"]})).replace('"ok"', '"\\ud800"')
    response = client.post("/api/projects", body, content_type="application/json", **auth)
    assert response.status_code == 422 and "follow.allow.0" in response.json()["errors"]
