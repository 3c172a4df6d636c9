"""A Scrapyd-compatible JSON API under ``/scrapyd/`` (docs/deploy.md).

``scrapyd-deploy`` and Scrapyd clients work unchanged: the endpoints, parameters and answers of
Scrapyd 1.6 (``{"node_name", "status": "ok", ...}``; errors ``{"node_name", "status": "error",
"message"}`` with HTTP 400, or 401/403/404/405). Parameters are read from the body and the
query string, as Scrapyd does. Authentication is HTTP basic: the user name and one
of the user's API tokens as the password. A Scrapyd "project" is a package, a "job" is a crawl
(``jobid`` = the crawl's code). Plain Django views: no session, no CSRF (nothing here reads a
cookie), every one of them authenticates first.
"""

import base64
import binascii
import socket
from functools import wraps

from django.conf import settings
from django.contrib.auth.decorators import login_not_required
from django.http import JsonResponse
from django.views.decorators.csrf import csrf_exempt

from crawler import keys
from crawler.definition import ALLOWED_SETTINGS, DefinitionError
from dashboard import engine, quotas
from dashboard.redis import get_redis
from dashboard.models import (
    DEPLOY_PERMISSION,
    ApiToken,
    Crawl,
    DeployError,
    ExpiredToken,
    InvalidTransition,
    Package,
    PackageVersion,
    too_large,
)

REALM = 'Basic realm="Crawlsite Scrapyd API", charset="UTF-8"'
# Scrapyd's own parameters of schedule.json; every other one is a spider argument.
SCHEDULE_PARAMS = ("project", "spider", "_version", "setting", "jobid", "priority", "_workers")
PENDING = (Crawl.PENDING,)
FINISHED = (Crawl.STOPPED, *Crawl.TERMINAL)
TIME_FORMAT = "%Y-%m-%d %H:%M:%S.%f"


def node_name():
    return socket.gethostname()


def ok(**fields):
    return JsonResponse({"node_name": node_name(), "status": "ok", **fields})


def error(message, status=400, **headers):
    response = JsonResponse({"node_name": node_name(), "status": "error", "message": message}, status=status)
    for name, value in headers.items():
        response[name.replace("_", "-")] = value
    return response


class Refused(Exception):
    def __init__(self, message, status=400):
        self.status = status
        super().__init__(message)


def _user(request):
    """The user of the request's basic credentials (user name + API token), or raise Refused(401)."""
    header = request.headers.get("Authorization", "")
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic" or not encoded or len(encoded) > 1024:
        raise Refused("Authentication required: HTTP basic, your user name and an API token as the password "
                      "(create one on your account page).", 401)
    try:
        username, sep, token = base64.b64decode(encoded.strip(), validate=True).decode("utf-8").partition(":")
    except (binascii.Error, UnicodeDecodeError):
        raise Refused("Malformed basic credentials.", 401) from None
    try:
        found = ApiToken.authenticate(token) if sep else None
    except ExpiredToken as exc:
        raise Refused(str(exc), 401) from None
    if found is None or found.user.get_username() != username:
        raise Refused("Unknown user name or API token (the password is an API token, not your password).", 401)
    return found.user


def endpoint(*methods):
    """A Scrapyd endpoint: authenticate, check the method, turn Refused into Scrapyd's error shape."""
    def wrap(view):
        @csrf_exempt
        @login_not_required
        @wraps(view)
        def handle(request):
            try:
                request.user = _user(request)
                if request.method not in methods:
                    raise Refused(f"{request.method} is not allowed here (use {' or '.join(methods)}).", 405)
                return view(request)
            except Refused as exc:
                headers = {"WWW_Authenticate": REALM} if exc.status == 401 else {}
                if exc.status == 405:
                    headers["Allow"] = ", ".join(methods)
                return error(str(exc), exc.status, **headers)
        return handle
    return wrap


def _values(request, name):
    """A parameter's values from the body and the query string (Scrapyd reads both)."""
    return request.POST.getlist(name) + request.GET.getlist(name) if request.method == "POST" else request.GET.getlist(name)


def _param(request, name, required=True):
    values = _values(request, name)
    value = values[0] if values else ""
    if required and not value:
        raise Refused(f"'{name}' parameter is required")
    return value


def _package(request, required=True):
    name = _param(request, "project", required)
    if not name:
        return None
    package = Package.objects.for_user(request.user).filter(name=name).first()
    if package is None:
        raise Refused(f"project '{name[:100]}' not found", 404)
    return package


MAX_JOBS = 1000  # listjobs.json and daemonstatus.json look at the latest jobs only


def _jobs(user, package=None):
    """The user's crawls of deployed spiders (of ``package``), newest first."""
    crawls = Crawl.objects.filter(project__owner=user, definition__operator__package__name__isnull=False)
    if package is not None:
        crawls = crawls.filter(definition__operator__package__name=package.name)
    return crawls.order_by("-created_at", "-id")


def _waiting(crawls):
    """Codes of running crawls no worker of which has started yet (their RQ jobs wait for a free
    RQ worker): Scrapyd's "pending". One pipelined Redis read."""
    running = [crawl for crawl in crawls if crawl.status == Crawl.RUNNING]
    if not running:
        return set()
    pipe = get_redis().pipeline(transaction=False)
    for crawl in running:
        pipe.hlen(keys.workers(crawl.code))
    return {crawl.code for crawl, count in zip(running, pipe.execute()) if not count}


def _state(crawl, waiting=frozenset()):
    if crawl.status in PENDING or crawl.code in waiting:
        return "pending"
    if crawl.status in FINISHED:
        return "finished"
    return "running"


def _time(value):
    return value.strftime(TIME_FORMAT) if value else None


def _job(crawl, state):
    spider = crawl.definition.get("spider") or {}
    frozen = crawl.definition["operator"]["package"]
    job = {"id": crawl.code, "project": frozen["name"], "spider": spider.get("spider"), "version": frozen["version"]}
    if state == "pending":
        job.update(settings=crawl.definition.get("settings") or {}, args=spider.get("args") or {})
        return job
    job.update(pid=None, start_time=_time(crawl.started_at or crawl.created_at), log_url=None,
               items_url=f"/crawls/{crawl.code}/items/")
    if state == "finished":
        job["end_time"] = _time(crawl.finished_at or crawl.status_changed_at)
    return job


@endpoint("GET")
def daemonstatus(request):
    counts = {"pending": 0, "running": 0, "finished": 0}
    crawls = list(_jobs(request.user).only("code", "status")[:MAX_JOBS])
    waiting = _waiting(crawls)
    for crawl in crawls:
        counts[_state(crawl, waiting)] += 1
    return ok(**counts)


@endpoint("POST")
def addversion(request):
    if not Package.may_deploy(request.user):
        raise Refused(DEPLOY_PERMISSION, 403)
    limit = settings.CRAWLSITE_MAX_PACKAGE_BYTES
    length = request.META.get("CONTENT_LENGTH") or "0"
    if not length.isdigit() or int(length) > limit + 64 * 1024:  # refused before the body is read
        raise Refused(too_large())
    project = _param(request, "project")
    version = _param(request, "version")
    upload = request.FILES.get("egg")
    if upload is None:
        raise Refused("'egg' parameter is required (the project's egg, as scrapyd-deploy sends it)")
    if upload.size > limit:
        raise Refused(too_large(upload.size))
    try:
        row = PackageVersion.add(request.user, project, version, upload.read())
    except DeployError as exc:
        raise Refused(str(exc)) from None
    return ok(project=project, version=row.version, spiders=len(row.spiders))


def parse_setting(text):
    """``NAME=VALUE`` from schedule.json into ``(NAME, typed value)`` for the definition's validator
    (which names what is wrong with it); raise Refused for text that is not ``NAME=VALUE``."""
    name, sep, raw = text.partition("=")
    if not sep or not name:
        raise Refused(f"setting {text[:100]!r} must be written NAME=VALUE")
    spec = ALLOWED_SETTINGS.get(name)
    if spec is None:
        return name, raw  # refused by the validator, with the list of allowed ones
    kind = spec["type"]
    if kind is bool:
        lowered = raw.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return name, True
        if lowered in ("0", "false", "no", "off"):
            return name, False
        raise Refused(f"setting {name}: {raw[:100]!r} is not true or false")
    if kind in (int, float):
        try:
            return name, kind(raw)
        except ValueError:
            raise Refused(f"setting {name}: {raw[:100]!r} is not {'a whole number' if kind is int else 'a number'}") from None
    return name, raw


def _definition_message(exc):
    return "; ".join(f"{field}: {' '.join(messages)}" for field, messages in sorted(exc.errors.items()))


@endpoint("POST")
def schedule(request):
    package = _package(request)
    spider = _param(request, "spider")
    chosen = {}
    for text in _values(request, "setting"):
        name, value = parse_setting(text)
        chosen[name] = value
    workers = _param(request, "_workers", False) or "1"
    if not workers.isdigit() or len(workers) > 3:
        raise Refused(f"_workers must be a whole number of workers, not {workers[:20]!r}")
    names = [*request.POST, *request.GET]
    args = {name: _values(request, name)[-1] for name in names if name not in SCHEDULE_PARAMS}
    try:
        crawl = engine.launch_deployed(request.user, package.name, spider, _param(request, "_version", False), args,
                                       chosen, int(workers), trigger=Crawl.TRIGGER_SCRAPYD)
    except DefinitionError as exc:
        if "spider.spider" in exc.errors:
            raise Refused(f"spider '{spider[:100]}' not found ({' '.join(exc.errors['spider.spider'])})") from None
        raise Refused(_definition_message(exc)) from None
    except (engine.LaunchError, quotas.QuotaExceeded) as exc:
        raise Refused(str(exc)) from None
    return ok(jobid=crawl.code)


@endpoint("POST")
def cancel(request):
    package = _package(request)
    code = _param(request, "job")
    crawl = _jobs(request.user, package).filter(code=code).first()
    if crawl is None:
        raise Refused(f"job '{code[:100]}' not found", 404)
    prevstate = _state(crawl, _waiting([crawl]))
    if prevstate == "finished":
        return ok(prevstate=None)
    try:
        engine.control(crawl, "force_stop" if _param(request, "signal", False) == "KILL" else "stop")
    except InvalidTransition as exc:
        raise Refused(str(exc)) from None
    return ok(prevstate=prevstate)


@endpoint("GET")
def listprojects(request):
    return ok(projects=list(Package.objects.for_user(request.user).values_list("name", flat=True)))


@endpoint("GET")
def listversions(request):
    package = _package(request)
    return ok(versions=list(package.versions.order_by("uploaded_at", "id").values_list("version", flat=True)))


@endpoint("GET")
def listspiders(request):
    package = _package(request)
    version = package.version(_param(request, "_version", False))
    if version is None:
        raise Refused(f"version '{_param(request, '_version', False)[:100]}' of project '{package.name}' not found", 404)
    return ok(spiders=list(version.spiders))


@endpoint("GET")
def listjobs(request):
    package = _package(request, required=False)
    found = {"pending": [], "running": [], "finished": []}
    crawls = list(_jobs(request.user, package)[:MAX_JOBS])[::-1]  # oldest first, as Scrapyd lists them
    waiting = _waiting(crawls)
    for crawl in crawls:
        state = _state(crawl, waiting)
        found[state].append(_job(crawl, state))
    return ok(**found)


@endpoint("GET")
def status(request):
    code = _param(request, "job")
    crawl = _jobs(request.user, _package(request, required=False)).filter(code=code).first()
    if crawl is None:
        return ok(currstate=None)
    state = _state(crawl, _waiting([crawl]))
    job = _job(crawl, state)
    return ok(currstate=state, **{k: job[k] for k in ("start_time", "end_time") if k in job})


@endpoint("POST")
def delversion(request):
    package = _package(request)
    version = _param(request, "version")
    row = package.versions.filter(version=version).first()
    if row is None:
        raise Refused(f"version '{version[:100]}' of project '{package.name}' not found", 404)
    row.remove()
    return ok()


@endpoint("POST")
def delproject(request):
    package = _package(request)
    package.delete()
    return ok()


ENDPOINTS = {
    "daemonstatus.json": daemonstatus, "addversion.json": addversion, "schedule.json": schedule,
    "cancel.json": cancel, "listprojects.json": listprojects, "listversions.json": listversions,
    "listspiders.json": listspiders, "listjobs.json": listjobs, "delversion.json": delversion,
    "delproject.json": delproject, "status.json": status,
}
