"""The JSON API (Django Ninja), with OpenAPI docs at /api/docs.

Browsers use their session (CSRF-checked); scripts send ``Authorization: Bearer TOKEN``, a token
made on the account page, through ``/api/tokens`` or by ``python manage.py apitoken USERNAME``.
Another user's project, crawl or token answers 404.
"""

from datetime import datetime
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.shortcuts import get_object_or_404
from django.utils import timezone
from ninja import Body, NinjaAPI, Path, Query, Schema, Status
from ninja.errors import AuthenticationError
from ninja.security import HttpBearer, django_auth
from pydantic import StrictInt
from redis.exceptions import RedisError

from crawler.counters import COUNTERS, RATES
from crawler.definition import DefinitionError
from dashboard import engine, history, live, monitors, notify, quotas, ratelimit, schedules, xlsx_builds
from dashboard import preview as previews
from dashboard.exports import ITEMS_PAGE_MAX, export_response, items_page, unknown_filter_response
from dashboard.models import (
    DEPLOY_PERMISSION,
    ApiToken,
    Channel,
    Crawl,
    Delivery,
    Monitor,
    DeployError,
    ExpiredToken,
    InvalidTransition,
    Package,
    PackageVersion,
    Project,
    Schedule,
    TokenError,
    too_large,
    validate_definition,
)
from dashboard.redis import get_redis


class BearerToken(HttpBearer):
    def authenticate(self, request, token):
        try:
            found = ApiToken.authenticate(token)
        except ExpiredToken as exc:
            raise AuthenticationError(401, str(exc)) from None
        if found is None:
            raise AuthenticationError(401, "Unknown or revoked API token.")
        request.user = found.user
        request.api_token = found
        return found.user


api = NinjaAPI(
    title="Crawlsite API",
    version="1",
    description="Create crawl definitions, launch and watch crawls, read their items.",
    auth=[BearerToken(), django_auth],
    docs_decorator=login_required,
    urls_namespace="api",
)


class ErrorOut(Schema):
    detail: str


class ValidationOut(Schema):
    detail: str
    errors: dict[str, list[str]]


class ProjectOut(Schema):
    id: str  # the project's public code; kept under "id" so scripts written against it still work
    code: str
    name: str
    definition: dict[str, Any]
    created_at: datetime
    updated_at: datetime
    latest_crawl: str | None


class LaunchIn(Schema):
    # Strict: a JSON integer only, not "3", 3.0 or true (issue 11: numbers are read strictly).
    workers: StrictInt | None = None


# The counter and rate names are defined once, in crawler/counters.py.
Counters = type("Counters", (Schema,), {"__annotations__": {n: int for n in COUNTERS}, **dict.fromkeys(COUNTERS, 0)})
Rates = type("Rates", (Schema,), {"__annotations__": {n: float for n in RATES}, **dict.fromkeys(RATES, 0.0)})


class WorkerOut(Schema):
    worker: str
    host: str = ""
    pid: int | None = None
    state: str
    pages: int = 0
    items: int = 0
    errors: int = 0
    in_flight: int = 0
    started_at: float | None = None
    updated_at: float | None = None
    message: str = ""


class StalledOut(Schema):
    since: datetime
    reason: str


class HolderOut(Schema):
    worker: str
    state: str
    leases: int
    in_flight: int
    last_heartbeat: float | None
    why: str


class OverdueOut(Schema):
    status: str
    since: datetime
    bound: float
    holders: list[HolderOut]


class DomainOut(Schema):
    domain: str
    rate: float
    in_flight: int
    limit: int
    pages: int


class PolitenessOut(Schema):
    limit: int
    delay: float
    randomize: bool
    autothrottle: bool
    site_wide: bool
    wait_s: float
    domains: list[DomainOut]


class CrawlOut(Schema):
    code: str
    project: str
    trigger: str
    schedule: str | None
    status: str
    status_since: datetime
    reason: str
    workers: int
    worker_states: list[WorkerOut]
    counters: Counters
    rates: Rates
    stalled: StalledOut | None
    overdue: OverdueOut | None
    politeness: PolitenessOut | None
    items_stored: int
    invalid: int = 0  # items that failed the project's validation
    replaced: int = 0  # items replaced by a later one with the same unique key
    coverage: dict[str, float] = {}
    checks: list[dict[str, Any]] = []
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


def project_out(project):
    latest = project.latest_crawl()
    return {
        "id": project.code,
        "code": project.code,
        "name": project.name,
        "definition": project.definition,
        "created_at": project.created_at,
        "updated_at": project.updated_at,
        "latest_crawl": latest.code if latest else None,
    }


def crawl_out(crawl):
    """The crawl's one view (dashboard.live.crawl_view) as the API shows it: ``workers`` is the
    number asked for, ``worker_states`` the workers' rows."""
    try:
        reading = live.read(get_redis(), [crawl])[crawl.code]
    except RedisError:
        reading = {}  # Redis away for a moment: the recorded numbers are the best we have
    view = live.crawl_view(crawl, reading)
    stored = crawl.stats.get("items_stored") if crawl.is_terminal else None
    return {
        **view,
        "workers": view["workers_asked"],
        "worker_states": view["workers"],
        "items_stored": stored if isinstance(stored, int) else crawl.items.count(),
        "schedule": crawl.schedule.code if crawl.schedule_id else None,
        "checks": crawl.checks or [],
    }


def _project(request, project_id):
    """The user's project by its public code (``id`` in the API), or 404."""
    return get_object_or_404(Project.objects.for_user(request.user), code=project_id)


def _crawl(request, code):
    return get_object_or_404(Crawl.objects.for_user(request.user).select_related("project", "schedule"), code=code)


def _validated(request, payload):
    if not isinstance(payload, dict):
        return None, Status(422, {"detail": "The crawl definition must be a JSON object.", "errors": {}})
    try:
        return validate_definition(payload, owner=request.user), None
    except DefinitionError as exc:
        return None, Status(422, {"detail": "Invalid crawl definition.", "errors": exc.errors})


def _save(project, definition):
    project.set_definition(definition)
    try:
        with transaction.atomic():
            project.save()
    except IntegrityError:
        return Status(409, {"detail": f"You already have a project named {definition['name']!r}."})
    return None


class VersionOut(Schema):
    version: str
    kind: str
    sha256: str
    size: int
    spiders: list[str]
    uploader: str | None
    uploaded_at: datetime


class PackageOut(Schema):
    name: str
    created_at: datetime
    latest: str | None
    spiders: list[str]  # of the latest version
    versions: list[VersionOut]  # oldest first, as Scrapyd lists them


def version_out(row):
    return {"version": row.version, "kind": row.kind, "sha256": row.sha256, "size": row.size,
            "spiders": row.spiders, "uploader": row.uploader.get_username() if row.uploader else None,
            "uploaded_at": row.uploaded_at}


def package_out(package):
    versions = [version_out(v) for v in package.versions.defer("data").select_related("uploader")
                .order_by("uploaded_at", "id")]
    return {"name": package.name, "created_at": package.created_at, "versions": versions,
            "latest": versions[-1]["version"] if versions else None,
            "spiders": versions[-1]["spiders"] if versions else []}


def _package(request, name):
    return get_object_or_404(Package.objects.for_user(request.user), name=name)


@api.get("/packages", response=list[PackageOut], tags=["code"])
def list_packages(request):
    """Your deployed Scrapy projects (docs/deploy.md), each with its versions and spiders."""
    return [package_out(p) for p in Package.objects.for_user(request.user)]


@api.get("/packages/{name}", response={200: PackageOut, 404: ErrorOut}, tags=["code"])
def get_package(request, name: str):
    return package_out(_package(request, name))


@api.post("/packages/{name}/versions", response={201: VersionOut, 403: ErrorOut, 422: ValidationOut},
          tags=["code"])
def upload_version(request, name: str):
    """Upload a version of package ``name`` (created on its first version): a multipart form with
    ``version`` (a new version name) and ``file`` (an egg, or a zip of the folder holding
    scrapy.cfg). Its spiders are listed in a subprocess first; 422 names what is wrong (not a zip
    or egg, no Scrapy project, the project's traceback, an existing version) and nothing is
    stored. Needs the ``deploy`` permission (403)."""
    if not Package.may_deploy(request.user):
        return Status(403, {"detail": DEPLOY_PERMISSION})
    limit = settings.CRAWLSITE_MAX_PACKAGE_BYTES
    length = request.META.get("CONTENT_LENGTH") or "0"
    if not length.isdigit() or int(length) > limit + 64 * 1024:  # refused before the body is read
        return Status(422, {"detail": too_large(), "errors": {"file": [too_large()]}})
    upload = request.FILES.get("file")
    if upload is None:
        return Status(422, {"detail": "No file uploaded.", "errors": {"file": ["Send the egg or zip as 'file'."]}})
    if upload.size > limit:
        return Status(422, {"detail": too_large(upload.size), "errors": {"file": [too_large(upload.size)]}})
    try:
        row = PackageVersion.add(request.user, name, request.POST.get("version", ""), upload.read())
    except DeployError as exc:
        return Status(422, {"detail": str(exc), "errors": {exc.field: [str(exc)]}})
    return Status(201, version_out(row))


@api.delete("/packages/{name}", response={204: None, 404: ErrorOut}, tags=["code"])
def delete_package(request, name: str):
    """Delete the package and every version. Crawls already running keep their code."""
    _package(request, name).delete()
    return Status(204, None)


@api.delete("/packages/{name}/versions/{version}", response={204: None, 404: ErrorOut}, tags=["code"])
def delete_version(request, name: str, version: str):
    """Delete one version (the package too if it was the last). Crawls already running keep it."""
    get_object_or_404(_package(request, name).versions.defer("data"), version=version).remove()
    return Status(204, None)


class RunIn(Schema):
    spider: str = ""
    version: str = ""
    workers: StrictInt = 1
    args: dict[str, Any] = {}
    settings: dict[str, Any] = {}


@api.post("/packages/{name}/crawls",
          response={201: CrawlOut, 404: ErrorOut, 409: ErrorOut, 422: ValidationOut, 503: ErrorOut}, tags=["code"])
def run_spider(request, name: str, payload: RunIn):
    """Run a spider of the package (``version`` empty: the latest) with spider ``args`` and
    ``settings`` (the definition's whitelist) on ``workers`` workers."""
    package = _package(request, name)
    try:
        crawl = engine.launch_deployed(request.user, package.name, payload.spider, payload.version, payload.args,
                                       payload.settings, payload.workers, trigger=Crawl.TRIGGER_API)
    except DefinitionError as exc:
        return Status(422, {"detail": "Invalid run.", "errors": exc.errors})
    except engine.LaunchError as exc:
        status = 503 if "Redis is unreachable" in str(exc) else 422
        return Status(status, {"detail": str(exc), "errors": {}})
    except quotas.QuotaExceeded as exc:
        return Status(409, {"detail": str(exc)})
    crawl.refresh_from_db()
    return Status(201, crawl_out(crawl))


class SpidersOut(Schema):
    spiders: list[str]


@api.get("/spiders", response=SpidersOut, tags=["projects"])
def list_spiders(request):
    """Names of the custom spiders the operator installed: the values a definition's ``spider``
    may take (empty: the built-in spider driven by ``item``)."""
    return {"spiders": sorted(settings.CRAWLSITE_SPIDERS)}


@api.post("/projects", response={201: ProjectOut, 409: ErrorOut, 422: ValidationOut}, tags=["projects"])
def create_project(request, payload: dict[str, Any] = Body(...)):
    """Create a project from a crawl definition (see docs/crawler.md for its fields).

    ``spider`` is empty (the built-in spider, driven by ``item``) or the name of a custom spider
    from ``GET /api/spiders``; any other value, a dotted path included, answers 422 and nothing
    is imported. Regexes (``follow.allow``, ``follow.deny``, ``item.url_pattern``) must compile
    with RE2: no lookaround, no backreferences. String settings and ``name`` refuse control
    characters."""
    definition, error = _validated(request, payload)
    if error:
        return error
    project = Project(owner=request.user)
    conflict = _save(project, definition)
    return conflict or Status(201, project_out(project))


@api.get("/projects", response=list[ProjectOut], tags=["projects"])
def list_projects(request):
    return [project_out(p) for p in Project.objects.for_user(request.user)]


@api.get("/projects/{project_id}", response={200: ProjectOut, 404: ErrorOut}, tags=["projects"])
def get_project(request, project_id: str):
    return project_out(_project(request, project_id))


@api.get("/projects/{project_id}/definition", response={200: dict[str, Any], 404: ErrorOut}, tags=["projects"])
def get_definition(request, project_id: str):
    """The project's crawl definition alone, as ``POST /api/projects`` takes it back (the file the
    project page's "Export definition" downloads)."""
    return _project(request, project_id).definition


@api.put("/projects/{project_id}", response={200: ProjectOut, 404: ErrorOut, 409: ErrorOut, 422: ValidationOut},
         tags=["projects"])
def update_project(request, project_id: str, payload: dict[str, Any] = Body(...)):
    """Replace the definition. Crawls already launched keep their frozen copy."""
    project = _project(request, project_id)
    definition, error = _validated(request, payload)
    if error:
        return error
    conflict = _save(project, definition)
    return conflict or project_out(project)


@api.delete("/projects/{project_id}", response={204: None, 404: ErrorOut, 409: ErrorOut}, tags=["projects"])
def delete_project(request, project_id: str):
    project = _project(request, project_id)
    if project.crawls.active().exists():
        return Status(409, {"detail": "This project has crawls still running: stop or cancel them first."})
    project.delete()
    return Status(204, None)


@api.post("/projects/{project_id}/crawls",
          response={201: CrawlOut, 404: ErrorOut, 409: ErrorOut, 422: ErrorOut, 503: ErrorOut}, tags=["crawls"])
def launch_crawl(request, project_id: str, payload: LaunchIn = Body(None)):
    """Launch a crawl of the project on ``workers`` workers (default: the definition's).
    409 when it would pass a per-user cap (active crawls or workers); the detail names it."""
    project = _project(request, project_id)
    workers = payload.workers if payload else None
    try:
        crawl = engine.launch(project, workers=workers, trigger=Crawl.TRIGGER_API)
    except engine.LaunchError as exc:
        status = 503 if "Redis is unreachable" in str(exc) else 422
        return Status(status, {"detail": str(exc)})
    except quotas.QuotaExceeded as exc:
        return Status(409, {"detail": str(exc)})
    crawl.refresh_from_db()
    return Status(201, crawl_out(crawl))


@api.get("/projects/{project_id}/crawls", response={200: list[CrawlOut], 404: ErrorOut}, tags=["crawls"])
def list_crawls(request, project_id: str):
    project = _project(request, project_id)
    """The project's latest 100 crawls, newest first; ``trigger`` says what started each
    (``user``, ``api``, ``schedule`` with ``schedule`` its code, or ``scrapyd``)."""
    return [crawl_out(c) for c in project.crawls.select_related("project", "schedule")[:100]]


@api.get("/crawls/{code}", response={200: CrawlOut, 404: ErrorOut}, tags=["crawls"])
def get_crawl(request, code: str):
    return crawl_out(_crawl(request, code))


class ScaleIn(Schema):
    workers: StrictInt


def _control(request, code, action):
    crawl = _crawl(request, code)
    try:
        crawl = engine.control(crawl, action)
    except (InvalidTransition, quotas.QuotaExceeded) as exc:
        return Status(409, {"detail": str(exc)})
    except RedisError as exc:
        return Status(503, {"detail": f"Redis is unreachable; nothing changed ({exc})."})
    return crawl_out(crawl)


CONTROL_RESPONSES = {200: CrawlOut, 404: ErrorOut, 409: ErrorOut, 503: ErrorOut}


@api.post("/crawls/{code}/pause", response=CONTROL_RESPONSES, tags=["control"])
def pause_crawl(request, code: str):
    """Workers take no new requests; in-flight downloads finish. Status: pausing, then paused."""
    return _control(request, code, "pause")


@api.post("/crawls/{code}/resume", response=CONTROL_RESPONSES, tags=["control"])
def resume_crawl(request, code: str):
    """Continue a paused crawl, or relaunch the workers of a stopped one."""
    return _control(request, code, "resume")


@api.post("/crawls/{code}/stop", response=CONTROL_RESPONSES, tags=["control"])
def stop_crawl(request, code: str):
    """Workers drain and exit; queue and dedupe are kept so the crawl can be resumed."""
    return _control(request, code, "stop")


@api.post("/crawls/{code}/force-stop", response=CONTROL_RESPONSES, tags=["control"])
def force_stop_crawl(request, code: str):
    """Stop a crawl stuck in pausing, stopping or finishing now: every worker's requests go back to
    the queue and its workers are marked gone; queue and dedupe are kept, so resume works."""
    return _control(request, code, "force_stop")


@api.post("/crawls/{code}/cancel", response=CONTROL_RESPONSES, tags=["control"])
def cancel_crawl(request, code: str):
    """End a paused or stopped crawl for good and delete its Redis state; items stay."""
    return _control(request, code, "cancel")


@api.post("/crawls/{code}/scale", response={**CONTROL_RESPONSES, 422: ErrorOut}, tags=["control"])
def scale_crawl(request, code: str, payload: ScaleIn):
    """Run ``workers`` workers: launch more, or retire the newest (they hand back their requests)."""
    crawl = _crawl(request, code)
    try:
        crawl = engine.scale(crawl, payload.workers)
    except (InvalidTransition, quotas.QuotaExceeded) as exc:
        return Status(409, {"detail": str(exc)})
    except engine.LaunchError as exc:
        return Status(422, {"detail": str(exc)})
    return crawl_out(crawl)


class ItemOut(Schema):
    id: int
    key: str
    url: str
    data: dict[str, Any]
    worker: str
    created_at: datetime
    invalid: bool = False
    errors: list[str] = []


class ItemsPage(Schema):
    items: list[ItemOut]
    next: int | None


MAX_ITEM_ID = 2 ** 63 - 1  # the largest id a database can hold; bigger cursors are refused


@api.get("/crawls/{code}/items", response={200: ItemsPage, 404: ErrorOut}, tags=["items"])
def list_items(request, code: str,
               after: int | None = Query(None, ge=0, le=MAX_ITEM_ID, description="cursor: the last id seen"),
               limit: int = Query(100, ge=1, le=ITEMS_PAGE_MAX, description=f"items per page, 1..{ITEMS_PAGE_MAX}"),
               invalid: bool = Query(False, description="only the items that failed validation")):
    """Items in the order they were stored; pass ``next`` back as ``after`` for the next page.
    ``limit`` is 1..1000; any other value (or a negative ``after``) is a 422 naming the parameter."""
    return items_page(_crawl(request, code), after=after, limit=limit, invalid=invalid)


class XlsxBuildOut(Schema):
    status: str
    snapshot: int
    only: str | None = None  # the export filter, if any
    detail: str
    status_url: str
    file_url: str


def _xlsx_status(request, build, code=202):
    response = api.create_response(request, build.as_json(api=True), status=code)
    if code == 202:
        response["Location"] = build.urls(api=True)["status_url"]
    return response


@api.get("/crawls/{code}/export", response={200: None, 202: XlsxBuildOut, 400: ErrorOut, 404: ErrorOut},
         tags=["items"])
def export_items(request, code: str, format: str = "jsonl", only: str | None = None):
    """A streamed download of every item stored so far (a consistent snapshot while running):
    ``jsonl``, ``json``, ``csv`` or ``xml``. ``only=invalid`` keeps the items that failed
    validation, ``only=new`` those whose item key was not in the project's previous finished run
    (every format, ``xlsx`` too); any other ``only`` is a 400 naming the valid ones.

    ``xlsx`` is built by a background job: the file itself (200) when one of the items stored now
    (with this filter) is ready, else 202 with ``status_url`` (poll it) and ``file_url`` (the file
    once ready)."""
    crawl = _crawl(request, code)
    refused = unknown_filter_response(only)
    if format != "xlsx" or refused is not None:
        return refused or export_response(crawl, format, only)
    build = xlsx_builds.request(crawl, only or "")
    if build.is_ready:
        return xlsx_builds.file_response(crawl, build.snapshot, build.only)
    return _xlsx_status(request, build)


@api.get("/crawls/{code}/compare", response={200: dict[str, Any], 404: ErrorOut, 422: ValidationOut},
         tags=["crawls"])
def compare_crawls(request, code: str, other: str = Query(..., alias="with", max_length=32,
                                                            description="code of the run to compare with")):
    """Two runs of one project side by side: counts, duration, rates, status codes, errors by
    type, field coverage, and the item keys that appeared (in ``code`` only) or disappeared (in
    ``with`` only), as distinct counts plus the first 50 of each."""
    crawl = _crawl(request, code)
    with_crawl = _crawl(request, other)
    if with_crawl.project_id != crawl.project_id:
        detail = f"Crawl {other} is a run of another project; compare runs of one project."
        return Status(422, {"detail": detail, "errors": {"with": [detail]}})
    return history.compare(crawl, with_crawl)


Snapshot = Path(..., ge=0, le=MAX_ITEM_ID, description="the largest item id in the file")


OnlyQuery = Query(None, description="the export filter of the build: invalid or new")


@api.get("/crawls/{code}/xlsx/{snapshot}", response={200: XlsxBuildOut, 400: ErrorOut, 404: ErrorOut},
         tags=["items"])
def xlsx_status(request, code: str, snapshot: int = Snapshot, only: str | None = OnlyQuery):
    """State of an Excel build: ``preparing``, ``ready`` or ``failed`` (``detail`` says why);
    404 when none was asked for (or its file expired). ``only``: the build's filter, as asked."""
    crawl = _crawl(request, code)
    refused = unknown_filter_response(only)
    if refused is not None:
        return refused
    build = xlsx_builds.status(crawl.code, snapshot, only or "")
    if build.status == xlsx_builds.MISSING:
        ask = f"/api/crawls/{crawl.code}/export?format=xlsx" + (f"&only={only}" if only else "")
        return Status(404, {"detail": f"{build.detail} Ask GET {ask}."})
    return _xlsx_status(request, build, code=200)


@api.get("/crawls/{code}/xlsx/{snapshot}/file", response={200: None, 400: ErrorOut, 404: ErrorOut, 409: ErrorOut},
         tags=["items"])
def xlsx_file(request, code: str, snapshot: int = Snapshot, only: str | None = OnlyQuery):
    """The finished .xlsx file; 409 while it is being built or after it failed, 404 when none."""
    crawl = _crawl(request, code)
    refused = unknown_filter_response(only)
    if refused is not None:
        return refused
    only = only or ""
    response = xlsx_builds.file_response(crawl, snapshot, only)
    if response is not None:
        return response
    build = xlsx_builds.status(crawl.code, snapshot, only)
    if build.status == xlsx_builds.MISSING:
        return Status(404, {"detail": build.detail})
    return Status(409, {"detail": f"The file is not ready: {build.status}. {build.detail}"})


# --- Preview (issue 17) ------------------------------------------------------------------------


class RobotsOut(Schema):
    obeyed: bool
    allowed: bool | None
    note: str


class IgnoredLinkOut(Schema):
    url: str
    reason: str


class LinksOut(Schema):
    follow: list[str]
    ignored: list[IgnoredLinkOut]


class PreviewOut(Schema):
    status: int
    url: str
    item_page: bool
    items: list[dict[str, Any]]
    matches: dict[str, Any]
    links: LinksOut
    robots: RobotsOut | None
    notes: list[str]


def refusal_response(request, exc, body=None):
    """The answer to a refused action (a PreviewError, a ratelimit.Limited): its status, ``detail``
    (or ``body``) and, past a rate limit, ``Retry-After``."""
    response = api.create_response(request, body or {"detail": exc.detail}, status=exc.status)
    if exc.retry_after:
        response["Retry-After"] = str(exc.retry_after)
    return response


def preview_error_response(request, exc):
    return refusal_response(request, exc, {"detail": exc.detail, "errors": exc.errors} if exc.status == 422 else None)


@api.post("/preview", response={200: PreviewOut, 422: ValidationOut, 429: ErrorOut, 500: ErrorOut, 503: ErrorOut},
          tags=["projects"])
async def preview(request, payload: dict[str, Any] = Body(...)):
    """Try a definition on one page before launching: ``{"definition": {...}, "url": "...",
    "depth": 0}``. The page is fetched as a worker fetches it (network policy, user agent,
    settings, size limit; no retries, a time limit) and read by the built-in spider's rules.

    The answer: HTTP ``status``, whether the URL is an ``item_page``, the ``items`` a crawl would
    store there (a field that matched nothing is ``null`` or ``[]``), ``matches`` (nodes per
    selector), ``links`` followed and ignored with the reason (scheme, off-domain, no allow match,
    deny pattern, depth, network guard), ``robots`` (what robots.txt says of the page). 422: an
    invalid definition or URL (``errors`` by field), or a URL refused by the network policy or
    unreachable (``errors.url``); 429 past ``PREVIEWS_PER_MINUTE`` (``Retry-After``).

    Async: the wait for the preview's subprocess holds no thread of the web process."""
    extra = sorted(set(payload) - {"definition", "url", "depth"})
    errors = {key: ["Unknown field (expected definition, url, depth)."] for key in extra}
    # The validator may look up the user's deployed packages: database work, off the event loop.
    definition, error = await sync_to_async(_validated)(request, payload.get("definition"))
    if error:
        errors.update(error.value["errors"] or {"definition": [error.value["detail"]]})
    try:
        previews.check_target(definition or {}, payload.get("url"), payload.get("depth", 0))
    except previews.PreviewError as exc:
        errors.update(exc.errors)
    if errors:
        return Status(422, {"detail": "Invalid preview request.", "errors": errors})
    try:
        return await previews.run(request.user, definition, payload.get("url"), payload.get("depth", 0))
    except previews.PreviewError as exc:
        return preview_error_response(request, exc)


# --- API tokens (issue 11) --------------------------------------------------------------------


class TokenOut(Schema):
    id: str
    name: str
    prefix: str
    created_at: datetime
    last_used_at: datetime | None
    expires_at: datetime | None
    expired: bool


class NewTokenOut(TokenOut):
    token: str


class TokenIn(Schema):
    name: str
    expires: str = "never"


def token_out(token):
    return {
        "id": token.public_id,
        "name": token.name,
        "prefix": token.prefix,
        "created_at": token.created_at,
        "last_used_at": token.last_used_at,
        "expires_at": token.expires_at,
        "expired": token.is_expired,
    }


@api.get("/tokens", response=list[TokenOut], tags=["tokens"])
def list_tokens(request):
    """Your API tokens (never their secrets), newest first."""
    return [token_out(t) for t in ApiToken.objects.for_user(request.user)]


@api.post("/tokens", response={201: NewTokenOut, 422: ErrorOut}, tags=["tokens"])
def create_token(request, payload: TokenIn):
    """Create a token. ``expires``: "never" (default), "<N>d" (days) or "<N>h" (hours).
    The answer holds the secret ``token``: it is shown this once and stored only as a hash.
    A token made by a request that used an expiring token cannot outlive that token."""
    try:
        expires_in = ApiToken.parse_expiry(payload.expires)
        parent = getattr(request, "api_token", None)
        if parent is not None and parent.expires_at is not None:
            if expires_in is None or timezone.now() + expires_in > parent.expires_at:
                raise TokenError(
                    f"This request used a token that expires at {parent.expires_at:%Y-%m-%d %H:%M} UTC; "
                    "a token it creates must expire no later."
                )
        token, secret = ApiToken.create_for(request.user, payload.name, expires_in)
    except TokenError as exc:
        return Status(422, {"detail": str(exc)})
    return Status(201, {**token_out(token), "token": secret})


@api.delete("/tokens/{token_id}", response={204: None, 404: ErrorOut}, tags=["tokens"])
def revoke_token(request, token_id: str):
    """Revoke one of your tokens at once; scripts using it get 401 from then on."""
    token = get_object_or_404(ApiToken.objects.for_user(request.user), public_id=token_id)
    token.delete()
    return Status(204, None)


# --- Schedules (issue 14) -----------------------------------------------------------------------


class ScheduleOut(Schema):
    id: str  # the schedule's public code
    code: str
    project: str
    cron: str
    timezone: str
    workers: int | None
    overlap: str
    catch_up: str
    max_runtime: int | None
    enabled: bool
    next_runs: list[str]
    created_at: datetime
    updated_at: datetime


class FireOut(Schema):
    due: datetime
    fired_at: datetime
    outcome: str
    reason: str
    crawl: str | None


def schedule_out(schedule):
    return {
        "id": schedule.code,
        "code": schedule.code,
        "project": schedule.project.code,
        **{field: getattr(schedule, field) for field in schedules.FIELDS},
        "next_runs": [moment.isoformat() for moment in schedules.next_runs(schedule)],
        "created_at": schedule.created_at,
        "updated_at": schedule.updated_at,
    }


def _schedule(request, schedule_id):
    return get_object_or_404(Schedule.objects.for_user(request.user).select_related("project"), code=schedule_id)


def _schedule_fields(payload, current=None):
    try:
        return schedules.validate(payload, current), None
    except schedules.ScheduleError as exc:
        return None, Status(422, {"detail": f"Invalid schedule: {exc}", "errors": exc.errors})


class ScheduleIn(Schema):
    """What the schedule endpoints take, for the OpenAPI docs only: the body is read as any JSON and
    checked by the one validator (dashboard.schedules.validate), which names every bad field."""

    cron: str
    timezone: str = "UTC"
    workers: int | None = None
    overlap: str = "skip"
    catch_up: str = "once"
    max_runtime: int | None = None
    enabled: bool = True


def _schedule_body(partial=False):
    schema = ScheduleIn.model_json_schema()
    if partial:  # PUT: every field may be left out
        schema.pop("required", None)
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}

# What the schedule endpoints take (their docstrings are the OpenAPI descriptions).
SCHEDULE_FIELDS_DOC = (
    "Body: ``cron`` (5 fields or ``@hourly``, ``@daily``, ``@weekly``, ``@monthly``), ``timezone`` (IANA "
    "name, default ``UTC``), ``workers`` (1..64, null = the definition's), ``overlap`` (``skip`` default, "
    "``queue``, ``parallel``), ``catch_up`` (``once`` default, ``skip``), ``max_runtime`` (seconds, "
    "1..2592000, null = none), ``enabled`` (default true). A bad field answers 422 with ``errors`` keyed by field."
)


@api.get("/projects/{project_id}/schedules", response={200: list[ScheduleOut], 404: ErrorOut}, tags=["schedules"])
def list_schedules(request, project_id: str):
    project = _project(request, project_id)
    return [schedule_out(s) for s in project.schedules.select_related("project")]


@api.post("/projects/{project_id}/schedules", response={201: ScheduleOut, 404: ErrorOut, 422: ValidationOut},
          tags=["schedules"], description="Add a schedule to the project. " + SCHEDULE_FIELDS_DOC,
          openapi_extra=_schedule_body())
def create_schedule(request, project_id: str, payload: Any = Body(...)):
    project = _project(request, project_id)
    cleaned, error = _schedule_fields(payload)
    if error:
        return error
    try:
        schedule = schedules.create(project, cleaned)
    except schedules.ScheduleError as exc:
        return Status(422, {"detail": str(exc), "errors": exc.errors})
    return Status(201, schedule_out(schedule))


@api.get("/schedules/{schedule_id}", response={200: ScheduleOut, 404: ErrorOut}, tags=["schedules"])
def get_schedule(request, schedule_id: str):
    return schedule_out(_schedule(request, schedule_id))


@api.put("/schedules/{schedule_id}", response={200: ScheduleOut, 404: ErrorOut, 422: ValidationOut},
         tags=["schedules"],
         description="Change a schedule; fields left out keep their value. A new cron or time zone starts from "
                     "its next fire after now. " + SCHEDULE_FIELDS_DOC,
         openapi_extra=_schedule_body(partial=True))
def update_schedule(request, schedule_id: str, payload: Any = Body(...)):
    schedule = _schedule(request, schedule_id)
    cleaned, error = _schedule_fields(payload, current=schedule)
    if error:
        return error
    return schedule_out(schedules.update(schedule, cleaned))


@api.delete("/schedules/{schedule_id}", response={204: None, 404: ErrorOut}, tags=["schedules"])
def delete_schedule(request, schedule_id: str):
    """Delete the schedule and its fire history; the crawls it started stay (without their schedule)."""
    _schedule(request, schedule_id).delete()
    return Status(204, None)


@api.get("/schedules/{schedule_id}/fires", response={200: list[FireOut], 404: ErrorOut}, tags=["schedules"])
def list_fires(request, schedule_id: str,
               limit: int = Query(100, ge=1, le=1000, description="fires, newest first, 1..1000")):
    """Every fire, newest first: ``launched`` (with its ``crawl``), ``skipped`` (with its
    ``reason``: overlap, schedule disabled, no RQ worker listening, a cap reached, missed or caught
    up) or ``queued`` (waiting for the previous run to end)."""
    schedule = _schedule(request, schedule_id)
    return [{"due": f.due, "fired_at": f.fired_at, "outcome": f.outcome, "reason": f.reason,
             "crawl": f.crawl.code if f.crawl_id else None}
            for f in schedule.fires.select_related("crawl")[:limit]]
# -- monitors, channels, deliveries (docs/alerts.md) ----------------------------------------------


class MonitorOut(Schema):
    id: str
    kind: str
    field: str
    threshold: float | None
    created_at: datetime


class ChannelOut(Schema):
    id: str
    kind: str
    target: str
    always: bool
    secret: str  # a hint only (its last characters), never the secret
    created_at: datetime


class NewChannelOut(ChannelOut):
    new_secret: str | None = None  # a generated webhook secret, shown this once


class DeliveryOut(Schema):
    id: str
    event: str
    crawl: str | None
    channel: str | None
    channel_kind: str
    target: str
    attempt: int
    outcome: str
    detail: str
    created_at: datetime


def monitor_out(m):
    return {"id": m.public_id, "kind": m.kind, "field": m.field, "threshold": m.threshold, "created_at": m.created_at}


def channel_out(c):
    return {"id": c.public_id, "kind": c.kind, "target": c.target, "always": c.always, "secret": c.secret_hint,
            "created_at": c.created_at}


def _invalid(what, exc):
    """422 naming each field that is wrong (``__all__``: the object as a whole)."""
    errors = exc.message_dict if hasattr(exc, "error_dict") else {"__all__": exc.messages}
    said = "; ".join(f"{k}: {v[0]}" if k != "__all__" else v[0] for k, v in errors.items())
    return Status(422, {"detail": f"Invalid {what}: {said}", "errors": errors})


@api.get("/projects/{project_id}/monitors", response={200: list[MonitorOut], 404: ErrorOut}, tags=["alerts"])
def list_monitors(request, project_id: str):
    """The project's monitors (docs/alerts.md)."""
    return [monitor_out(m) for m in _project(request, project_id).monitors.all()]


@api.post("/projects/{project_id}/monitors", response={201: MonitorOut, 404: ErrorOut, 422: ValidationOut},
          tags=["alerts"])
def create_monitor(request, project_id: str, payload: dict[str, Any] = Body(...)):
    """Add a monitor, e.g. ``{"kind": "field_coverage", "field": "upc", "min_percent": 90}``. Kinds and
    their threshold: ``status`` (none), ``items_min`` (``min_items``), ``items_drop`` (``min_percent``
    of the previous finished run), ``error_rate`` (``max_percent``), ``field_coverage`` (``field``,
    ``min_percent``), ``invalid_max`` (``max_invalid``), ``stalled`` (``minutes``)."""
    project = _project(request, project_id)
    try:
        clean = monitors.clean_monitor(project, payload)
    except ValidationError as exc:
        return _invalid("monitor", exc)
    return Status(201, monitor_out(Monitor.objects.create(project=project, **clean)))


@api.delete("/projects/{project_id}/monitors/{monitor_id}", response={204: None, 404: ErrorOut}, tags=["alerts"])
def delete_monitor(request, project_id: str, monitor_id: str):
    project = _project(request, project_id)
    get_object_or_404(project.monitors, public_id=monitor_id).delete()
    return Status(204, None)


@api.get("/projects/{project_id}/channels", response={200: list[ChannelOut], 404: ErrorOut}, tags=["alerts"])
def list_channels(request, project_id: str):
    """The project's notification channels; secrets show as a hint only."""
    return [channel_out(c) for c in _project(request, project_id).channels.all()]


@api.post("/projects/{project_id}/channels", response={201: NewChannelOut, 404: ErrorOut, 422: ValidationOut},
          tags=["alerts"])
def create_channel(request, project_id: str, payload: dict[str, Any] = Body(...)):
    """Add a channel: ``{"kind": "webhook", "url": "https://...", "secret": "..."}`` (signed
    JSON; a secret is generated and shown once when left out), ``{"kind": "slack", "url": ...}``
    or ``{"kind": "email", "emails": ["ops@example.com"]}``. ``"always": true`` notifies at every
    run end, not only when a monitor failed."""
    project = _project(request, project_id)
    try:
        clean = notify.clean_channel(project, payload)
    except ValidationError as exc:
        return _invalid("channel", exc)
    generated = clean.get("secret") if clean["kind"] == Channel.WEBHOOK and not payload.get("secret") else None
    channel = Channel.objects.create(project=project, **clean)
    return Status(201, {**channel_out(channel), "new_secret": generated})


@api.delete("/projects/{project_id}/channels/{channel_id}", response={204: None, 404: ErrorOut}, tags=["alerts"])
def delete_channel(request, project_id: str, channel_id: str):
    project = _project(request, project_id)
    get_object_or_404(project.channels, public_id=channel_id).delete()
    return Status(204, None)


@api.post("/projects/{project_id}/channels/{channel_id}/test",
          response={202: ErrorOut, 404: ErrorOut, 429: ErrorOut, 503: ErrorOut}, tags=["alerts"])
def test_channel(request, project_id: str, channel_id: str):
    """Queue a ``test`` notification through the channel; the delivery log shows how it went.
    429 past ``CHANNEL_TESTS_PER_MINUTE`` per user (``Retry-After``)."""
    project = _project(request, project_id)
    channel = get_object_or_404(project.channels, public_id=channel_id)
    try:
        notify.send_test(channel, request.user)
    except ratelimit.Limited as exc:
        return refusal_response(request, exc)
    return Status(202, {"detail": "A test notification is queued; see the delivery log."})


@api.get("/projects/{project_id}/deliveries", response={200: list[DeliveryOut], 404: ErrorOut}, tags=["alerts"])
def list_deliveries(request, project_id: str, limit: int = Query(100, ge=1, le=500)):
    """Every delivery attempt of the project's notifications, newest first."""
    project = _project(request, project_id)
    rows = Delivery.objects.filter(project=project).select_related("alert__crawl", "channel")[:limit]
    return [{"id": d.public_id, "event": d.alert.event, "crawl": d.alert.crawl.code if d.alert.crawl else None,
             "channel": d.channel.public_id if d.channel else None, "channel_kind": d.channel_kind,
             "target": d.target, "attempt": d.attempt, "outcome": d.outcome, "detail": d.detail,
             "created_at": d.created_at} for d in rows]
