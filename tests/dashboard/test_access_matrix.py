"""Walks the access table of docs/security.md as anonymous, outsider, owner and staff.

Each row is one page, API endpoint, export or websocket; each cell is what that kind of user
must get. Staff are not owners: they see other people's crawls only through the admin.
"""

import base64
import json

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.test import Client

from dashboard import schedules, xlsx_builds
from dashboard.models import ApiToken, Channel, Crawl, Item, Monitor
from tests.dashboard.factories import definition, grant_deploy, package_for, project_for

LOGIN = "login"  # redirect to /accounts/login/
ADMIN_LOGIN = "admin-login"  # redirect to /admin/login/
OK = 200
FOUND = 302  # an action that worked and redirects back
NOT_FOUND = 404
UNAUTHORIZED = 401
FORBIDDEN = 403
UNPROCESSABLE = 422  # reached the view: refused for the input, not for who asked
BAD = 400

# (method, path template, anonymous, outsider, owner, staff)
HTTP_TABLE = [
    ("GET", "/accounts/login/", OK, FOUND, FOUND, FOUND),
    ("POST", "/accounts/logout/", LOGIN, LOGIN, LOGIN, LOGIN),
    ("GET", "/", LOGIN, OK, OK, OK),
    ("GET", "/healthz", "public", "public", "public", "public"),
    ("GET", "/projects/", LOGIN, OK, OK, OK),
    ("GET", "/projects/new/", LOGIN, OK, OK, OK),
    ("GET", "/projects/{project}/", LOGIN, NOT_FOUND, OK, NOT_FOUND),
    ("GET", "/projects/{project}/edit/", LOGIN, NOT_FOUND, OK, NOT_FOUND),
    ("GET", "/projects/{project}/delete/", LOGIN, NOT_FOUND, OK, NOT_FOUND),
    ("POST", "/projects/{project}/launch", LOGIN, NOT_FOUND, FOUND, NOT_FOUND),
    ("GET", "/projects/{project}/export?format=csv", LOGIN, NOT_FOUND, OK, NOT_FOUND),
    ("GET", "/projects/{project}/definition.json", LOGIN, NOT_FOUND, OK, NOT_FOUND),
    ("POST", "/projects/import", LOGIN, UNPROCESSABLE, UNPROCESSABLE, UNPROCESSABLE),  # no file sent
    ("POST", "/projects/preview", LOGIN, UNPROCESSABLE, UNPROCESSABLE, UNPROCESSABLE),  # an empty form
    ("POST", "/projects/{project}/preview", LOGIN, NOT_FOUND, UNPROCESSABLE, NOT_FOUND),  # no URL to try
    ("GET", "/projects/{project}/schedules/new/", LOGIN, NOT_FOUND, OK, NOT_FOUND),
    ("POST", "/projects/{project}/schedules/new/", LOGIN, NOT_FOUND, FOUND, NOT_FOUND),
    ("GET", "/schedules/{schedule}/", LOGIN, NOT_FOUND, OK, NOT_FOUND),
    ("GET", "/schedules/{schedule}/edit/", LOGIN, NOT_FOUND, OK, NOT_FOUND),
    ("POST", "/schedules/{schedule}/edit/", LOGIN, NOT_FOUND, FOUND, NOT_FOUND),
    ("POST", "/schedules/{schedule}/disable", LOGIN, NOT_FOUND, FOUND, NOT_FOUND),
    ("POST", "/schedules/{schedule}/enable", LOGIN, NOT_FOUND, FOUND, NOT_FOUND),
    ("POST", "/schedules/{spare_schedule}/delete", LOGIN, NOT_FOUND, FOUND, NOT_FOUND),
    ("GET", "/crawls/{crawl}/", LOGIN, NOT_FOUND, OK, NOT_FOUND),
    ("POST", "/crawls/{running}/pause", LOGIN, NOT_FOUND, FOUND, NOT_FOUND),
    ("POST", "/crawls/{running}/stop", LOGIN, NOT_FOUND, FOUND, NOT_FOUND),
    ("POST", "/crawls/{crawl}/resume", LOGIN, NOT_FOUND, FOUND, NOT_FOUND),
    ("POST", "/crawls/{crawl}/cancel", LOGIN, NOT_FOUND, FOUND, NOT_FOUND),
    ("POST", "/crawls/{running}/scale", LOGIN, NOT_FOUND, FOUND, NOT_FOUND),
    ("POST", "/crawls/{stopping}/force-stop", LOGIN, NOT_FOUND, FOUND, NOT_FOUND),
    ("GET", "/crawls/{crawl}/items/", LOGIN, NOT_FOUND, OK, NOT_FOUND),
    ("GET", "/crawls/{crawl}/compare/?with={finished}", LOGIN, NOT_FOUND, OK, NOT_FOUND),
    ("GET", "/crawls/{crawl}/items/{item}.json", LOGIN, NOT_FOUND, OK, NOT_FOUND),
    ("GET", "/crawls/{crawl}/export?format=jsonl", LOGIN, NOT_FOUND, OK, NOT_FOUND),
    ("POST", "/crawls/{crawl}/xlsx", LOGIN, NOT_FOUND, FOUND, NOT_FOUND),
    ("GET", "/crawls/{crawl}/xlsx/{snapshot}/", LOGIN, NOT_FOUND, OK, NOT_FOUND),
    ("GET", "/crawls/{crawl}/xlsx/{snapshot}/status", LOGIN, NOT_FOUND, OK, NOT_FOUND),
    ("GET", "/crawls/{crawl}/xlsx/{snapshot}/file", LOGIN, NOT_FOUND, OK, NOT_FOUND),
    ("GET", "/code/", LOGIN, OK, OK, OK),
    ("POST", "/code/upload", LOGIN, FORBIDDEN, UNPROCESSABLE, UNPROCESSABLE),  # deploy permission; empty form
    ("GET", "/code/{package}/", LOGIN, NOT_FOUND, OK, NOT_FOUND),
    ("POST", "/code/{package}/run", LOGIN, NOT_FOUND, FOUND, NOT_FOUND),
    ("POST", "/code/{package}/delete", LOGIN, NOT_FOUND, FOUND, NOT_FOUND),
    ("POST", "/code/{package}/versions/{version}/delete", LOGIN, NOT_FOUND, FOUND, NOT_FOUND),
    ("GET", "/crawls/{crawl}/export?format=xlsx&only=invalid", LOGIN, NOT_FOUND, FOUND, NOT_FOUND),
    ("GET", "/crawls/{crawl}/xlsx/{snapshot}/?only=invalid", LOGIN, NOT_FOUND, OK, NOT_FOUND),
    ("GET", "/crawls/{crawl}/xlsx/{snapshot}/status?only=new", LOGIN, NOT_FOUND, OK, NOT_FOUND),
    ("GET", "/crawls/{crawl}/xlsx/{snapshot}/file?only=invalid", LOGIN, NOT_FOUND, OK, NOT_FOUND),
    ("GET", "/accounts/password/", LOGIN, OK, OK, OK),
    ("GET", "/account/", LOGIN, OK, OK, OK),
    ("POST", "/account/tokens/new", LOGIN, OK, OK, OK),
    ("POST", "/account/tokens/{token}/revoke", LOGIN, NOT_FOUND, FOUND, NOT_FOUND),
    ("POST", "/projects/{project}/monitors/new", LOGIN, NOT_FOUND, FOUND, NOT_FOUND),
    ("POST", "/projects/{project}/monitors/{monitor}/delete", LOGIN, NOT_FOUND, FOUND, NOT_FOUND),
    ("POST", "/projects/{project}/channels/new", LOGIN, NOT_FOUND, FOUND, NOT_FOUND),
    ("POST", "/projects/{project}/channels/{channel}/delete", LOGIN, NOT_FOUND, FOUND, NOT_FOUND),
    ("POST", "/projects/{project}/channels/{channel}/test", LOGIN, NOT_FOUND, FOUND, NOT_FOUND),
    ("GET", "/admin/", ADMIN_LOGIN, ADMIN_LOGIN, ADMIN_LOGIN, OK),
    ("GET", "/rq/", ADMIN_LOGIN, ADMIN_LOGIN, ADMIN_LOGIN, OK),
    ("GET", "/api/docs", LOGIN, OK, OK, OK),
    ("GET", "/api/openapi.json", LOGIN, OK, OK, OK),
    ("GET", "/api/spiders", UNAUTHORIZED, OK, OK, OK),
    ("GET", "/api/projects", UNAUTHORIZED, OK, OK, OK),
    ("POST", "/api/projects", UNAUTHORIZED, 201, 201, 201),
    ("GET", "/api/projects/{project}", UNAUTHORIZED, NOT_FOUND, OK, NOT_FOUND),
    ("PUT", "/api/projects/{project}", UNAUTHORIZED, NOT_FOUND, OK, NOT_FOUND),
    ("GET", "/api/projects/{project}/definition", UNAUTHORIZED, NOT_FOUND, OK, NOT_FOUND),
    ("POST", "/api/preview", UNAUTHORIZED, UNPROCESSABLE, UNPROCESSABLE, UNPROCESSABLE),  # an empty request
    ("DELETE", "/api/projects/{spare}", UNAUTHORIZED, NOT_FOUND, 204, NOT_FOUND),
    ("POST", "/api/projects/{project}/crawls", UNAUTHORIZED, NOT_FOUND, 201, NOT_FOUND),
    ("GET", "/api/projects/{project}/crawls", UNAUTHORIZED, NOT_FOUND, OK, NOT_FOUND),
    ("GET", "/api/projects/{project}/schedules", UNAUTHORIZED, NOT_FOUND, OK, NOT_FOUND),
    ("POST", "/api/projects/{project}/schedules", UNAUTHORIZED, NOT_FOUND, 201, NOT_FOUND),
    ("GET", "/api/schedules/{schedule}", UNAUTHORIZED, NOT_FOUND, OK, NOT_FOUND),
    ("PUT", "/api/schedules/{schedule}", UNAUTHORIZED, NOT_FOUND, OK, NOT_FOUND),
    ("DELETE", "/api/schedules/{spare_schedule}", UNAUTHORIZED, NOT_FOUND, 204, NOT_FOUND),
    ("GET", "/api/schedules/{schedule}/fires", UNAUTHORIZED, NOT_FOUND, OK, NOT_FOUND),
    ("GET", "/api/crawls/{crawl}", UNAUTHORIZED, NOT_FOUND, OK, NOT_FOUND),
    ("POST", "/api/crawls/{running}/pause", UNAUTHORIZED, NOT_FOUND, OK, NOT_FOUND),
    ("POST", "/api/crawls/{running}/stop", UNAUTHORIZED, NOT_FOUND, OK, NOT_FOUND),
    ("POST", "/api/crawls/{crawl}/resume", UNAUTHORIZED, NOT_FOUND, OK, NOT_FOUND),
    ("POST", "/api/crawls/{crawl}/cancel", UNAUTHORIZED, NOT_FOUND, OK, NOT_FOUND),
    ("POST", "/api/crawls/{running}/scale", UNAUTHORIZED, NOT_FOUND, OK, NOT_FOUND),
    ("POST", "/api/crawls/{stopping}/force-stop", UNAUTHORIZED, NOT_FOUND, OK, NOT_FOUND),
    ("GET", "/api/crawls/{crawl}/items", UNAUTHORIZED, NOT_FOUND, OK, NOT_FOUND),
    ("GET", "/api/crawls/{crawl}/compare?with={finished}", UNAUTHORIZED, NOT_FOUND, OK, NOT_FOUND),
    ("GET", "/api/crawls/{crawl}/export?format=json", UNAUTHORIZED, NOT_FOUND, OK, NOT_FOUND),
    ("GET", "/api/crawls/{crawl}/export?format=xlsx", UNAUTHORIZED, NOT_FOUND, OK, NOT_FOUND),
    ("GET", "/api/crawls/{crawl}/xlsx/{snapshot}", UNAUTHORIZED, NOT_FOUND, OK, NOT_FOUND),
    ("GET", "/api/crawls/{crawl}/xlsx/{snapshot}/file", UNAUTHORIZED, NOT_FOUND, OK, NOT_FOUND),
    ("GET", "/api/packages", UNAUTHORIZED, OK, OK, OK),
    ("GET", "/api/packages/{package}", UNAUTHORIZED, NOT_FOUND, OK, NOT_FOUND),
    ("POST", "/api/packages/{package}/versions", UNAUTHORIZED, FORBIDDEN, UNPROCESSABLE, UNPROCESSABLE),
    ("DELETE", "/api/packages/{package}", UNAUTHORIZED, NOT_FOUND, 204, NOT_FOUND),
    ("DELETE", "/api/packages/{package}/versions/{version}", UNAUTHORIZED, NOT_FOUND, 204, NOT_FOUND),
    ("POST", "/api/packages/{package}/crawls", UNAUTHORIZED, NOT_FOUND, UNPROCESSABLE, NOT_FOUND),
    # The Scrapyd-compatible API: HTTP basic auth with an API token; another owner's project is 404.
    ("GET", "/scrapyd/daemonstatus.json", UNAUTHORIZED, OK, OK, OK),
    ("POST", "/scrapyd/addversion.json?project=shopbot&version=v9", UNAUTHORIZED, FORBIDDEN, BAD, BAD),
    ("POST", "/scrapyd/schedule.json?project={package}&spider=nope", UNAUTHORIZED, NOT_FOUND, BAD, NOT_FOUND),
    ("POST", "/scrapyd/cancel.json?project={package}&job={deployed}", UNAUTHORIZED, NOT_FOUND, OK, NOT_FOUND),
    ("GET", "/scrapyd/listprojects.json", UNAUTHORIZED, OK, OK, OK),
    ("GET", "/scrapyd/listversions.json?project={package}", UNAUTHORIZED, NOT_FOUND, OK, NOT_FOUND),
    ("GET", "/scrapyd/listspiders.json?project={package}", UNAUTHORIZED, NOT_FOUND, OK, NOT_FOUND),
    ("GET", "/scrapyd/listjobs.json?project={package}", UNAUTHORIZED, NOT_FOUND, OK, NOT_FOUND),
    ("GET", "/scrapyd/status.json?job={deployed}", UNAUTHORIZED, OK, OK, OK),  # others' jobs: currstate null
    ("POST", "/scrapyd/delversion.json?project={package}&version={version}", UNAUTHORIZED, NOT_FOUND, OK, NOT_FOUND),
    ("POST", "/scrapyd/delproject.json?project={package}", UNAUTHORIZED, NOT_FOUND, OK, NOT_FOUND),
    ("GET", "/api/crawls/{crawl}/export?format=xlsx&only=invalid", UNAUTHORIZED, NOT_FOUND, OK, NOT_FOUND),
    ("GET", "/api/crawls/{crawl}/xlsx/{snapshot}?only=new", UNAUTHORIZED, NOT_FOUND, OK, NOT_FOUND),
    ("GET", "/api/crawls/{crawl}/xlsx/{snapshot}/file?only=invalid", UNAUTHORIZED, NOT_FOUND, OK, NOT_FOUND),
    ("GET", "/api/tokens", UNAUTHORIZED, OK, OK, OK),
    ("POST", "/api/tokens", UNAUTHORIZED, 201, 201, 201),
    ("DELETE", "/api/tokens/{token}", UNAUTHORIZED, NOT_FOUND, 204, NOT_FOUND),
    ("GET", "/api/projects/{project}/monitors", UNAUTHORIZED, NOT_FOUND, OK, NOT_FOUND),
    ("POST", "/api/projects/{project}/monitors", UNAUTHORIZED, NOT_FOUND, 201, NOT_FOUND),
    ("DELETE", "/api/projects/{project}/monitors/{monitor}", UNAUTHORIZED, NOT_FOUND, 204, NOT_FOUND),
    ("GET", "/api/projects/{project}/channels", UNAUTHORIZED, NOT_FOUND, OK, NOT_FOUND),
    ("POST", "/api/projects/{project}/channels", UNAUTHORIZED, NOT_FOUND, 201, NOT_FOUND),
    ("DELETE", "/api/projects/{project}/channels/{channel}", UNAUTHORIZED, NOT_FOUND, 204, NOT_FOUND),
    ("POST", "/api/projects/{project}/channels/{channel}/test", UNAUTHORIZED, NOT_FOUND, 202, NOT_FOUND),
    ("GET", "/api/projects/{project}/deliveries", UNAUTHORIZED, NOT_FOUND, OK, NOT_FOUND),
]
# Bodies of the requests that create something (the others send "{}" or a workers count).
BODIES = {
    "/api/monitors": {"kind": "items_min", "min_items": 1},
    "/api/channels": {"kind": "email", "emails": ["ops@example.com"]},
    "/monitors/new": {"kind": "status"},
    "/channels/new": {"kind": "email", "emails": "ops@example.com"},
}
ROLES = ("anonymous", "outsider", "owner", "staff")


@pytest.fixture
def world(db, owner, outsider, staff):
    project = project_for(owner, "Shop")
    spare = project_for(owner, "Spare")
    # A stopped crawl (resume and cancel apply) and a running one (pause, stop, scale apply).
    crawl = Crawl.objects.create(project=project, definition=project.definition, status=Crawl.STOPPED)
    running = Crawl.objects.create(project=project, definition=project.definition, status=Crawl.RUNNING, workers=1)
    finished = Crawl.objects.create(project=project, definition=project.definition, status=Crawl.FINISHED)
    stopping = Crawl.objects.create(project=project, definition=project.definition, status=Crawl.STOPPING)
    item = Item.objects.create(crawl=crawl, key="k", url="http://127.0.0.1:9/p", data={"url": "http://127.0.0.1:9/p", "title": "x"})
    Item.objects.create(crawl=finished, key="k", url="http://127.0.0.1:9/p", data={"url": "http://127.0.0.1:9/p", "title": "x"})
    staff.is_superuser = True
    staff.save()
    for only in ("", "invalid", "new"):  # ready Excel files of the crawl's items: all, invalid, new
        xlsx_builds.build(crawl.code, item.pk, only)
    token, _secret = ApiToken.create_for(owner, "owner's script")
    schedule = schedules.create(project, schedules.validate({"cron": "@daily"}))
    spare_schedule = schedules.create(project, schedules.validate({"cron": "@hourly"}))
    monitor = Monitor.objects.create(project=project, kind=Monitor.ITEMS_MIN, threshold=1)
    channel = Channel.objects.create(project=project, kind=Channel.EMAIL, emails=["ops@example.com"])
    owner = grant_deploy(owner)  # staff are superusers here: they may deploy too; the outsider may not
    package = package_for(owner, "shopbot", "v1")
    deployed = Crawl.objects.create(project=project, status=Crawl.FINISHED, definition={
        **project.definition, "operator": {"package": {"name": "shopbot", "version": "v1", "sha256": "0" * 64}}})
    return {
        "users": {"owner": owner, "outsider": outsider, "staff": staff},
        "ids": {"project": project.code, "spare": spare.code, "crawl": crawl.code, "running": running.code, "item": item.key,
                "snapshot": item.pk, "token": token.public_id, "stopping": stopping.code,
                "schedule": schedule.code, "spare_schedule": spare_schedule.code, "finished": finished.code,
                "monitor": monitor.public_id, "channel": channel.public_id,
                "package": package.name, "version": "v1", "deployed": deployed.code},
    }


def request(role, method, path, world):
    client = Client()
    headers = {}
    if role != "anonymous":
        user = world["users"][role]
        if path.startswith("/scrapyd/"):
            secret = base64.b64encode(f"{user.username}:{ApiToken.issue(user)}".encode()).decode()
            headers["HTTP_AUTHORIZATION"] = f"Basic {secret}"
        elif path.startswith("/api/") and not path.startswith(("/api/docs", "/api/openapi")):
            headers["HTTP_AUTHORIZATION"] = f"Bearer {ApiToken.issue(user)}"
        else:
            client.force_login(user)
    body, content_type = None, None
    if method in ("POST", "PUT"):
        if path.startswith("/scrapyd/"):
            body = {}
        elif path.startswith("/api/"):
            content_type = "application/json"
            if path.endswith("/scale"):
                body = json.dumps({"workers": 1})
            elif path == "/api/tokens":
                body = json.dumps({"name": f"Made by {role}", "expires": "30d"})
            elif "/schedules" in path:
                body = json.dumps({"cron": "*/5 * * * *", "enabled": False})
            elif path == "/api/projects" or method == "PUT":
                body = json.dumps(definition(f"Made by {role}"))
            elif path.endswith(("/monitors", "/channels")):
                body = json.dumps(BODIES["/api/" + path.rsplit("/", 1)[1]])
            else:
                body = "{}"
        elif path == "/account/tokens/new":
            body = {"name": f"Made by {role}", "expires": "never"}
        elif "/schedules/" in path and (path.endswith("/new/") or path.endswith("/edit/")):
            body = {"cron": "@weekly", "timezone": "Europe/Berlin", "overlap": "skip", "catch_up": "once"}
        elif path.endswith(("/monitors/new", "/channels/new")):
            body = BODIES["/" + "/".join(path.rsplit("/", 2)[1:])]
        else:
            body = {"workers": "1"}
    call = getattr(client, method.lower())
    if body is None:
        return call(path, **headers)
    if content_type:
        return call(path, body, content_type=content_type, **headers)
    return call(path, body, **headers)


CASES = [(method, path, role, row[2 + i]) for method, path, *rest in HTTP_TABLE for i, role in enumerate(ROLES) for row in [(method, path, *rest)]]


@pytest.mark.django_db
@pytest.mark.parametrize("method,path,role,expected", CASES, ids=[f"{c[2]}-{c[0]}-{c[1]}" for c in CASES])
def test_http_access_table(world, method, path, role, expected):
    response = request(role, method, path.format(**world["ids"]), world)
    status = response.status_code
    if expected == LOGIN:
        assert status == 302 and response["Location"].startswith("/accounts/login/"), (status, response.get("Location"))
    elif expected == ADMIN_LOGIN:
        assert status == 302 and response["Location"].startswith("/admin/login/"), (status, response.get("Location"))
    elif expected == "public":
        assert status in (200, 503) and response["Content-Type"] == "application/json"
    else:
        assert status == expected, (status, response.content[:300])


def test_every_route_is_in_the_access_table():
    """A new URL without a row here (and in docs/security.md) fails this test."""
    from django.urls import get_resolver

    covered = {path.split("?")[0] for _m, path, *_ in HTTP_TABLE}
    documented = open("docs/security.md").read()
    missing = []

    def walk(patterns, prefix=""):
        for pattern in patterns:
            text = prefix + str(pattern.pattern)
            if text.startswith(("admin/", "rq/")):
                continue  # the admin site and django-rq: staff only, checked by their own rows
            if hasattr(pattern, "url_patterns"):
                walk(pattern.url_patterns, text)
                continue
            missing.append(text)

    walk(get_resolver().url_patterns)
    shapes = {_shape(p) for p in covered}
    unknown = [p for p in missing if _shape(p) not in shapes and p != "api/"]
    assert unknown == [], f"routes missing from the access table: {unknown}"
    for path in covered:
        assert path.split("{")[0].rstrip("/") in documented, f"{path} missing from docs/security.md"


def _shape(path):
    """A route and a table path reduced to the same shape: parameters become {}."""
    import re

    path = path.lstrip("^").rstrip("$").lstrip("/")
    path = re.sub(r"\(\?P<action>[^)]*\)", "{action}", path)
    path = re.sub(r"\(\?P<\w+>[^)]*\)", "{}", path)
    path = re.sub(r"<(\w+:)?\w+>", "{}", path)
    path = re.sub(r"\{(project|spare|crawl|running|stopping|finished|item|snapshot|token|schedule|spare_schedule|monitor|channel|package|version|deployed)\}", "{}", path)
    for action in ("pause", "resume", "stop", "force-stop", "cancel", "scale"):
        path = path.replace("{}/" + action, "{}/{action}")
    return path


# -- websockets, through the full ASGI stack (origin check, session auth) ------------------------

WS_TABLE = [
    # path, anonymous, outsider, owner, staff: "open" or the close code
    ("/ws/crawls/", 4401, "open", "open", "open"),
    ("/ws/crawls/{crawl}/", 4401, 4404, "open", 4404),
]


def session_cookie(user):
    client = Client()
    client.force_login(user)
    return client.cookies["sessionid"].value


async def ws_outcome(path, cookie=None, origin=b"http://localhost"):
    from crawlsite.asgi import application

    headers = [(b"host", b"localhost")]
    if origin:
        headers.append((b"origin", origin))
    if cookie:
        headers.append((b"cookie", f"sessionid={cookie}".encode()))
    comm = WebsocketCommunicator(application, path, headers=headers)
    connected, code = await comm.connect(timeout=5)
    if not connected:
        return code
    message = await comm.receive_output(timeout=5)
    if message["type"] == "websocket.close":
        await comm.wait()
        return message["code"]
    await comm.disconnect()
    return "open"


WS_CASES = [(path, role, row[1 + i]) for row in WS_TABLE for path in [row[0]] for i, role in enumerate(ROLES)]


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("path,role,expected", WS_CASES, ids=[f"{c[1]}-{c[0]}" for c in WS_CASES])
async def test_websocket_access_table(owner, outsider, staff, path, role, expected):
    project = await sync_to_async(project_for)(owner, "Shop")
    crawl = await sync_to_async(Crawl.objects.create)(project=project, definition=project.definition, status=Crawl.RUNNING)
    users = {"owner": owner, "outsider": outsider, "staff": staff}
    cookie = None if role == "anonymous" else await sync_to_async(session_cookie)(users[role])
    assert await ws_outcome(path.format(crawl=crawl.code), cookie) == expected


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_websocket_from_another_origin_is_refused(owner):
    cookie = await sync_to_async(session_cookie)(owner)
    outcome = await ws_outcome("/ws/crawls/", cookie, origin=b"http://evil.example")
    assert outcome != "open"
    assert await ws_outcome("/ws/crawls/", cookie, origin=None) != "open"
