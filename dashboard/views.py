import json
import math

from django.conf import settings
from django.contrib import messages
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_not_required
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.db.models import Prefetch
from django.http import Http404, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse_lazy
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from crawler.definition import MAX_WORKERS
from crawler.definition import DefinitionError
from dashboard import engine, exports, history, live, monitors, notify, quotas, ratelimit, schedules, xlsx_builds
from dashboard import preview as previews
from dashboard import items as item_queries
from dashboard.forms import (ASCII_WHOLE_NUMBER, DefinitionImportForm, ProjectForm, RunForm, ScheduleForm, TokenForm,
                             UploadForm, parse_whole_number)
from dashboard.health import health
from dashboard.models import (
    DEPLOY_PERMISSION,
    ApiToken,
    Channel,
    Crawl,
    Delivery,
    DeployError,
    InvalidTransition,
    Monitor,
    Package,
    PackageVersion,
    Project,
    Schedule,
    TokenError,
    validate_definition,
)


def _get_project_for_user(request, code):
    """The user's own project by its public code, or 404 (another owner's project does not exist
    for them)."""
    return get_object_or_404(Project.objects.for_user(request.user), code=code)


def _get_crawl_for_user(request, code):
    """The user's own crawl by its public code, or 404."""
    return get_object_or_404(Crawl.objects.for_user(request.user).select_related("project"), code=code)


def _get_package_for_user(request, name):
    """The user's own deployed package by name, or 404."""
    return get_object_or_404(Package.objects.for_user(request.user), name=name)


@require_GET
def overview(request):
    return render(request, "dashboard/overview.html", {"health": health(), **live.overview_page_context(request.user)})


@require_GET
def project_list(request):
    projects = Project.objects.for_user(request.user).prefetch_related("crawls")
    return render(request, "dashboard/project_list.html", {"projects": projects})


def _save_project(request, form, project):
    project.set_definition(form.cleaned_data["definition"])
    try:
        with transaction.atomic():
            project.save()
    except IntegrityError:
        form.add_error("name", "You already have a project with this name.")
        return False
    return True


@require_http_methods(["GET", "POST"])
def project_create(request):
    form = ProjectForm(request.POST or None, owner=request.user)
    if request.method == "POST" and form.is_valid():
        project = Project(owner=request.user)
        if _save_project(request, form, project):
            messages.success(request, f"Project “{project.name}” created. Launch it when you are ready.")
            return redirect(project)
    return render(request, "dashboard/project_form.html",
                  {"form": form, "creating": True, "import_form": DefinitionImportForm()})


@require_POST
def project_import(request):
    """Create a project from an exported definition file (the same validator; every error at once)."""
    import_form = DefinitionImportForm(request.POST, request.FILES, owner=request.user)
    if import_form.is_valid():
        project = Project(owner=request.user)
        project.set_definition(import_form.cleaned_data["definition"])
        try:
            with transaction.atomic():
                project.save()
        except IntegrityError:
            import_form.add_error("file", f"You already have a project named “{project.name}”: rename it in the "
                                          "file (“name”) or rename the existing project.")
        else:
            messages.success(request, f"Project “{project.name}” imported. Launch it when you are ready.")
            return redirect(project)
    return render(request, "dashboard/project_form.html",
                  {"form": ProjectForm(), "creating": True, "import_form": import_form}, status=422)


@require_GET
def project_definition(request, code):
    """The project's definition as a JSON file: “Export definition”; “Import” takes it back."""
    project = _get_project_for_user(request, code)
    body = json.dumps(project.definition, ensure_ascii=False, indent=2) + "\n"
    response = HttpResponse(body, content_type="application/json; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="crawlsite-{project.code}.json"'
    return response


async def _preview_response(user, definition, url, depth):
    try:
        return JsonResponse(await previews.run(user, definition, url, depth))
    except previews.PreviewError as exc:
        response = JsonResponse({"detail": exc.detail, "errors": exc.errors}, status=exc.status)
        if exc.retry_after:
            response["Retry-After"] = str(exc.retry_after)
        return response


def _preview_depth(request):
    raw = request.POST.get("preview_depth", "") or "0"
    return int(raw) if ASCII_WHOLE_NUMBER.fullmatch(raw) else -1  # -1: refused by the preview's check


@require_POST
async def project_form_preview(request):
    """“Try it” on the project form (create and edit): the form as typed, not saved, tried on
    ``preview_url``. Form errors come back keyed by form field, every one at once. Async, as
    are all preview views: the preview's subprocess is awaited, holding no thread."""
    user = await request.auser()
    form = ProjectForm(request.POST)
    if not form.is_valid():
        errors = {field: [str(e) for e in errs] for field, errs in form.errors.items()}
        return JsonResponse({"detail": "Please correct the fields marked in the form first.", "errors": errors},
                            status=422)
    return await _preview_response(user, form.cleaned_data["definition"], request.POST.get("preview_url", ""),
                                   _preview_depth(request))


@require_POST
async def project_preview(request, code):
    """“Try it” on the project page: the saved definition, tried on ``preview_url``."""
    user = await request.auser()
    project = await Project.objects.for_user(user).filter(code=code).afirst()
    if project is None:
        raise Http404("No such project.")
    try:
        definition = validate_definition(project.definition)
    except DefinitionError as exc:  # saved before a validator change: edit it first
        return JsonResponse({"detail": "This project's definition is no longer valid: edit it.", "errors": exc.errors},
                            status=422)
    return await _preview_response(user, definition, request.POST.get("preview_url", ""), _preview_depth(request))


@require_http_methods(["GET", "POST"])
def project_edit(request, code):
    project = _get_project_for_user(request, code)
    form = ProjectForm(request.POST or None, initial=ProjectForm.initial_from(project.definition), owner=request.user)
    if request.method == "POST" and form.is_valid():
        if _save_project(request, form, project):
            messages.success(request, "Saved. Crawls already running keep the definition they started with.")
            return redirect(project)
    return render(request, "dashboard/project_form.html", {"form": form, "project": project})


@require_GET
def project_detail(request, code):
    return _project_page(request, _get_project_for_user(request, code))


def _project_page(request, project, status=200, **forms):
    """The project page; ``forms`` carry a refused monitor or channel form (values and errors)."""
    runs = history.project_runs(project, limit=50)
    for newer, older in zip(runs, runs[1:] + [None]):
        newer["previous"] = older["code"] if older else None
    chart = [{k: r[k] for k in ("code", "duration_s", "live", "pages", "items", "errors", "invalid")}
             | {"t": r["created_at"].timestamp()} for r in reversed(runs)]
    schedule_rows = [(schedule, schedules.next_runs(schedule, count=1)) for schedule in project.schedules.all()]
    context = {"project": project, "runs": runs, "runs_chart": chart, "schedules": schedule_rows,
               "usage": quotas.summary(request.user),
               "monitors": project.monitors.all(), "channels": project.channels.all(),
               "deliveries": Delivery.objects.filter(project=project).select_related("alert__crawl")[:20],
               "monitor_kinds": Monitor.KIND_CHOICES, "channel_kinds": Channel.KIND_CHOICES,
               "fields": live.crawl_fields(project.definition),
               "limits": [(name, value) for name, value in project.definition.get("limits", {}).items() if value],
               **forms}
    return render(request, "dashboard/project_detail.html", context, status=status)


# --- Monitors and notification channels (docs/alerts.md) ----------------------------------------


def _form_errors(exc, renamed=None):
    """A ValidationError's messages by form input (``form``: the form as a whole)."""
    renamed = {"__all__": "form", **(renamed or {})}
    return {renamed.get(k, k): v for k, v in exc.message_dict.items()}


@require_POST
def project_monitor_create(request, code):
    project = _get_project_for_user(request, code)
    data = {k: v.strip() for k, v in request.POST.items() if k in ("kind", "field", "threshold")}
    try:
        clean = monitors.clean_monitor(project, data)
    except ValidationError as exc:
        names = {t[0] for t in monitors.THRESHOLDS.values()}
        errors = _form_errors(exc, {name: "threshold" for name in names})
        return _project_page(request, project, 422, monitor_form=data, monitor_errors=errors)
    Monitor.objects.create(project=project, **clean)
    messages.success(request, "Monitor added.")
    return redirect(project)


@require_POST
def project_monitor_delete(request, code, monitor_id):
    project = _get_project_for_user(request, code)
    get_object_or_404(project.monitors, public_id=monitor_id).delete()
    messages.success(request, "Monitor removed.")
    return redirect(project)


@require_POST
def project_channel_create(request, code):
    project = _get_project_for_user(request, code)
    data = {k: v.strip() for k, v in request.POST.items() if k in ("kind", "url", "secret", "emails")}
    data["always"] = request.POST.get("always") == "on"
    try:
        clean = notify.clean_channel(project, data)
    except ValidationError as exc:
        data.pop("secret", None)  # never echoed back
        return _project_page(request, project, 422, channel_form=data, channel_errors=_form_errors(exc))
    channel = Channel.objects.create(project=project, **clean)
    if clean["kind"] == Channel.WEBHOOK and not data.get("secret"):
        return _project_page(request, project, new_channel=channel, new_secret=clean["secret"])
    messages.success(request, "Channel added.")
    return redirect(project)


@require_POST
def project_channel_delete(request, code, channel_id):
    project = _get_project_for_user(request, code)
    get_object_or_404(project.channels, public_id=channel_id).delete()
    messages.success(request, "Channel removed.")
    return redirect(project)


@require_POST
def project_channel_test(request, code, channel_id):
    project = _get_project_for_user(request, code)
    channel = get_object_or_404(project.channels, public_id=channel_id)
    try:
        notify.send_test(channel, request.user)
    except ratelimit.Limited as exc:
        messages.error(request, f"No test notification sent. {exc.detail}")
        return redirect(project)
    messages.success(request, "Test notification queued: the delivery log below shows how it went.")
    return redirect(project)


@require_http_methods(["GET", "POST"])
def project_delete(request, code):
    project = _get_project_for_user(request, code)
    active = project.crawls.active().exists()
    if request.method == "POST":
        if active:
            messages.error(request, "This project has crawls still running: stop or cancel them first.")
            return redirect(project)
        name = project.name
        project.delete()
        messages.success(request, f"Project “{name}” and its crawls were deleted.")
        return redirect("dashboard:project-list")
    return render(request, "dashboard/project_confirm_delete.html", {"project": project, "active": active})


@require_POST
def project_launch(request, code):
    project = _get_project_for_user(request, code)
    workers = request.POST.get("workers", "")
    try:
        workers = parse_whole_number(workers, "Workers", 1, MAX_WORKERS) if workers else None
    except ValidationError as exc:
        messages.error(request, exc.message)
        return redirect(project)
    return _open_launched(request, lambda: engine.launch(project, workers=workers), project)


def _open_launched(request, launch, back):
    """Call ``launch()``; open the new crawl's page, or go ``back`` with what refused it."""
    try:
        crawl = launch()
    except DefinitionError as exc:
        for field, errors in sorted(exc.errors.items()):
            messages.error(request, f"{field}: {' '.join(errors)}")
        return redirect(back)
    except (engine.LaunchError, quotas.QuotaExceeded) as exc:
        messages.error(request, str(exc))
        return redirect(back)
    crawl.refresh_from_db()
    if crawl.status == crawl.FAILED:
        messages.error(request, crawl.reason)
    return redirect(crawl)


# --- Schedules (issue 14) ------------------------------------------------------------------------


def _get_schedule_for_user(request, code):
    """The user's own schedule by its public code, or 404."""
    return get_object_or_404(Schedule.objects.for_user(request.user).select_related("project"), code=code)


def _schedule_form_page(request, form, project, schedule=None):
    return render(request, "dashboard/schedule_form.html", {
        "form": form, "project": project, "schedule": schedule, "timezones": schedules.timezone_names(),
    })


@require_http_methods(["GET", "POST"])
def schedule_create(request, code):
    project = _get_project_for_user(request, code)
    form = ScheduleForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            schedule = schedules.create(project, form.cleaned_schedule)
        except schedules.ScheduleError as exc:
            form.add_error(None, " ".join(exc.errors.get("__all__", [str(exc)])))
        else:
            messages.success(request, "Schedule created.")
            return redirect(schedule)
    return _schedule_form_page(request, form, project)


@require_http_methods(["GET", "POST"])
def schedule_edit(request, code):
    schedule = _get_schedule_for_user(request, code)
    form = ScheduleForm(request.POST or None, initial=ScheduleForm.initial_from(schedule))
    if request.method == "POST" and form.is_valid():
        schedules.update(schedule, form.cleaned_schedule)
        messages.success(request, "Schedule saved.")
        return redirect(schedule)
    return _schedule_form_page(request, form, schedule.project, schedule)


FIRES_SHOWN = 200


@require_GET
def schedule_detail(request, code):
    schedule = _get_schedule_for_user(request, code)
    fires = schedule.fires.select_related("crawl")[:FIRES_SHOWN]
    return render(request, "dashboard/schedule_detail.html", {
        "schedule": schedule, "project": schedule.project, "next_runs": schedules.next_runs(schedule),
        "fires": fires, "fire_count": schedule.fires.count(), "fires_shown": FIRES_SHOWN,
    })


@require_POST
def schedule_enable(request, code):
    schedule = _get_schedule_for_user(request, code)
    schedules.set_enabled(schedule, True)
    messages.success(request, "Schedule enabled.")
    return redirect(schedule)


@require_POST
def schedule_disable(request, code):
    schedule = _get_schedule_for_user(request, code)
    schedules.set_enabled(schedule, False)
    messages.success(request, "Schedule disabled: its fires are recorded as skipped until you enable it.")
    return redirect(schedule)


@require_POST
def schedule_delete(request, code):
    schedule = _get_schedule_for_user(request, code)
    project = schedule.project
    schedule.delete()
    messages.success(request, "Schedule deleted. The crawls it started are kept.")
    return redirect(project)


@require_POST
def crawl_control(request, code, action):
    """The crawl page's pause / resume / stop / force stop / cancel / scale buttons."""
    crawl = _get_crawl_for_user(request, code)
    action = action.replace("-", "_")  # URLs spell force_stop as force-stop
    if action not in Crawl.USER_ACTIONS:
        raise Http404("No such action.")
    try:
        if action == "scale":
            try:
                workers = parse_whole_number(request.POST.get("workers", ""), "Workers", 1, MAX_WORKERS)
            except ValidationError as exc:
                raise engine.LaunchError(exc.message) from None
            engine.scale(crawl, workers)
        else:
            engine.control(crawl, action)
    except (InvalidTransition, engine.LaunchError, quotas.QuotaExceeded) as exc:
        messages.error(request, str(exc))
    return redirect(crawl)


BUTTON_STYLES = {"resume": "btn-primary", "cancel": "btn-danger", "force_stop": "btn-danger"}


def crawl_controls(crawl):
    """The control buttons of a crawl, from the lifecycle table: the statuses each applies in and
    why it cannot apply now."""
    return [
        {"action": action, "slug": action.replace("_", "-"), "label": Crawl.LIFECYCLE[action].label, "style": BUTTON_STYLES.get(action, ""),
         "allowed": Crawl.allowed_statuses(action), "refusal": crawl.refusal(action)}
        for action in Crawl.USER_ACTIONS if action != "scale"
    ]


@require_GET
def crawl_detail(request, code):
    crawl = _get_crawl_for_user(request, code)
    context = {"crawl": crawl, "controls": crawl_controls(crawl), **live.crawl_page_context(crawl)}
    context["scale_allowed"] = Crawl.allowed_statuses("scale")
    context["scale_refusal"] = crawl.refusal("scale")
    return render(request, "dashboard/crawl_detail.html", context)


@login_not_required
@never_cache
@require_GET
def healthz(request):
    """Liveness of every component for monitors and load balancers. Anyone may ask, so it answers
    booleans and counts only: no versions, vendors or error texts."""
    report = health()
    public = {
        name: {key: value for key, value in part.items() if key in ("ok", "count")}
        for name, part in report.items() if isinstance(part, dict)
    }
    public["ok"] = report["ok"]
    return JsonResponse(public, status=200 if report["ok"] else 503)


@login_not_required
def login_locked_out(request, response=None, credentials=None):
    """django-axes' answer to a login from a locked-out user name and address (dashboard or admin)."""
    from axes.helpers import get_client_username, get_cool_off

    cool_off = get_cool_off(request)
    context = {
        "failure_limit": settings.AXES_FAILURE_LIMIT,
        "username": get_client_username(request, credentials) or "",
        "minutes": max(1, math.ceil(cool_off.total_seconds() / 60)) if cool_off else 0,
    }
    return render(request, "registration/locked_out.html", context, status=429)


@login_not_required
def page_not_found(request, exception):
    return render(request, "404.html", status=404)


@login_not_required
def server_error(request):
    return render(request, "500.html", status=500)


# --- Items and exports (issue 6) ---------------------------------------------------------------


def _cursor(request, name):
    """An ``?after=`` / ``?before=`` cursor: a positive item id, or None when absent or malformed."""
    value = request.GET.get(name, "")
    return int(value) if ASCII_WHOLE_NUMBER.fullmatch(value) else None


@require_GET
def crawl_items(request, code):
    crawl = _get_crawl_for_user(request, code)
    q = request.GET.get("q", "").strip()
    before = _cursor(request, "before")
    invalid = request.GET.get("invalid") == "1"
    page = item_queries.page(crawl, after=None if before is not None and not q else _cursor(request, "after"),
                             before=before, q=q, searched=_cursor(request, "searched") or 0, invalid=invalid)
    return render(request, "dashboard/items.html", {
        "crawl": crawl,
        "page": page,
        "q": q,
        "invalid": invalid,
        "invalid_count": (crawl.stats or {}).get("invalid"),
        "item_count": item_queries.item_count(crawl),
        "formats": list(exports.FORMATS),
        "filters": [(only, label, exports.ONLY_LABELS[only].capitalize() + ".")
                    for only, label in (("invalid", "Invalid"), ("new", "New since previous run"))],
    })


@require_GET
def crawl_compare(request, code):
    """Two runs of one project side by side (``?with=CODE``; default: the previous finished run)."""
    crawl = _get_crawl_for_user(request, code)
    runs = list(crawl.project.crawls.exclude(pk=crawl.pk).order_by("-created_at", "-id")
                .values_list("code", "status", "created_at")[:100])
    other_code = request.GET.get("with", "").strip()[:32]
    error = ""
    if other_code:
        other = _get_crawl_for_user(request, other_code)
        if other.project_id != crawl.project_id:
            error = f"Crawl {other.code} is a run of another project; pick a run of this project."
            other = None
    else:
        other = history.previous_finished(crawl)
    result = history.compare(crawl, other) if other is not None else None
    return render(request, "dashboard/compare.html", {
        "crawl": crawl, "other": other, "runs": runs, "result": result, "error": error,
        "rows": history.compare_rows(result) if result else [],
    }, status=422 if error else 200)


@require_GET
def item_json(request, code, key):
    """One item's data, addressed by its stable key (never by a database id)."""
    crawl = _get_crawl_for_user(request, code)
    item = get_object_or_404(crawl.items.only("data"), key=key)
    return JsonResponse(item.data, safe=False, json_dumps_params={"ensure_ascii": False, "indent": 2})


def _export(crawl, fmt, only=None):
    refused = exports.unknown_filter_response(only)
    if refused is not None:
        return refused
    if fmt == "xlsx":  # built by a job: its page offers the file when it is ready
        return redirect(xlsx_builds.page_url(crawl.code, exports.snapshot_max_id(crawl), only or ""))
    return exports.export_response(crawl, fmt, only or None)


@require_GET
def crawl_export(request, code):
    crawl = _get_crawl_for_user(request, code)
    return _export(crawl, request.GET.get("format", "jsonl"), request.GET.get("only"))


def _xlsx_only(query):
    """The export filter of an Excel build (``only``: "" or one of exports.ONLY), or a 400."""
    only = query.get("only", "")
    return only, exports.unknown_filter_response(only)


@require_POST
def crawl_xlsx_request(request, code):
    """Start building the Excel file of the items stored now (or reuse a ready or running build)."""
    crawl = _get_crawl_for_user(request, code)
    only, refused = _xlsx_only(request.POST)
    if refused is not None:
        return refused
    return redirect(xlsx_builds.request(crawl, only).page_url())


@require_GET
def crawl_xlsx(request, code, snapshot):
    """The page of one Excel build: preparing (polled by static/js/xlsx_build.js), ready or failed."""
    crawl = _get_crawl_for_user(request, code)
    only, refused = _xlsx_only(request.GET)
    if refused is not None:
        return refused
    build = xlsx_builds.status(crawl.code, snapshot, only)
    return render(request, "dashboard/xlsx.html", {
        "crawl": crawl, "build": build, "filename": exports.filename(crawl, "xlsx", only),
        "only_label": exports.ONLY_LABELS.get(only, ""), **build.urls(),
    })


@never_cache
@require_GET
def crawl_xlsx_status(request, code, snapshot):
    crawl = _get_crawl_for_user(request, code)
    only, refused = _xlsx_only(request.GET)
    return refused or JsonResponse(xlsx_builds.status(crawl.code, snapshot, only).as_json())


@require_GET
def crawl_xlsx_file(request, code, snapshot):
    crawl = _get_crawl_for_user(request, code)
    only, refused = _xlsx_only(request.GET)
    if refused is not None:
        return refused
    response = xlsx_builds.file_response(crawl, snapshot, only)
    if response is None:
        raise Http404("This Excel file is not ready, or has expired.")
    return response


@require_GET
def project_export(request, code):
    """The latest finished crawl of a project, at a URL that stays the same between runs."""
    project = _get_project_for_user(request, code)
    crawl = project.crawls.filter(status=Crawl.FINISHED).order_by("-finished_at", "-id").first()
    if crawl is None:
        return JsonResponse({"detail": f"Project {project.name!r} has no finished crawl yet."}, status=404)
    return _export(crawl, request.GET.get("format", "jsonl"), request.GET.get("only"))


# --- Account: API tokens (issue 11) -------------------------------------------------------------


def _account_page(request, form, new_token=None, secret=None):
    tokens = ApiToken.objects.for_user(request.user)
    context = {"form": form, "tokens": tokens, "new_token": new_token, "secret": secret,
               "max_tokens": ApiToken.MAX_PER_USER}
    return render(request, "dashboard/account.html", context)


@never_cache
@require_GET
def account(request):
    return _account_page(request, TokenForm())


@never_cache
@require_POST
def account_token_create(request):
    """Create a token and show its secret on this one answer (never stored, never redirected)."""
    form = TokenForm(request.POST)
    if form.is_valid():
        try:
            token, secret = ApiToken.create_for(request.user, form.cleaned_data["name"], form.cleaned_data["expires"])
        except TokenError as exc:
            form.add_error(None, str(exc))
        else:
            return _account_page(request, TokenForm(), new_token=token, secret=secret)
    return _account_page(request, form)


@require_POST
def account_token_revoke(request, token_id):
    token = get_object_or_404(ApiToken.objects.for_user(request.user), public_id=token_id)
    token.delete()
    messages.success(request, f"Token “{token.name}” ({token.prefix}…) revoked: it no longer works.")
    return redirect("dashboard:account")


class PasswordChangeView(auth_views.PasswordChangeView):
    """Django's password change, back to the account page; the change revokes every API token."""

    success_url = reverse_lazy("dashboard:account")

    def form_valid(self, form):
        response = super().form_valid(form)
        messages.success(self.request, "Password changed. Your API tokens were revoked: create new ones below.")
        return response


# -- deployed code (docs/deploy.md) -------------------------------------------------------------


def _package_list_page(request, form, status=200):
    versions = Prefetch("versions", queryset=PackageVersion.objects.defer("data").order_by("uploaded_at", "id"))
    packages = [(p, list(p.versions.all())) for p in Package.objects.for_user(request.user).prefetch_related(versions)]
    context = {"packages": [{"package": p, "latest": v[-1] if v else None, "count": len(v)} for p, v in packages], "form": form, "may_deploy": Package.may_deploy(request.user),
               "deploy_permission": DEPLOY_PERMISSION}
    return render(request, "dashboard/package_list.html", context, status=status)


@require_GET
def package_list(request):
    return _package_list_page(request, UploadForm())


@require_POST
def package_upload(request):
    """A new version from the upload form; the Code page again, with the errors, if refused."""
    if not Package.may_deploy(request.user):
        messages.error(request, DEPLOY_PERMISSION)
        return _package_list_page(request, UploadForm(), status=403)
    form = UploadForm(request.POST, request.FILES)
    if form.is_valid():
        data = form.cleaned_data
        try:
            version = PackageVersion.add(request.user, data["package"], data["version"], data["file"].read())
        except DeployError as exc:
            form.add_error(exc.field if exc.field in form.fields else None, str(exc))
        else:
            messages.success(request, f"Version {version.version} of {version.package.name} deployed: "
                                      f"{len(version.spiders)} spider{'s' if len(version.spiders) != 1 else ''}.")
            return redirect(version.package)
    return _package_list_page(request, form, status=422)


@require_GET
def package_detail(request, name):
    package = _get_package_for_user(request, name)
    versions = package.versions.defer("data").select_related("uploader").order_by("-uploaded_at", "-id")
    return render(request, "dashboard/package_detail.html",
                  {"package": package, "versions": versions, "latest": versions.first(), "form": RunForm()})


@require_POST
def package_run(request, name):
    """Run a spider of the package: its crawl page is the usual one."""
    package = _get_package_for_user(request, name)
    form = RunForm(request.POST)
    if not form.is_valid():
        for field, errors in form.errors.items():
            messages.error(request, f"{form.fields[field].label if field in form.fields else ''}: {' '.join(errors)}")
        return redirect(package)
    data = form.cleaned_data
    return _open_launched(request, lambda: engine.launch_deployed(
        request.user, package.name, data["spider"], data["version"], data["args"], workers=data["workers"]), package)


@require_POST
def package_version_delete(request, name, version):
    package = _get_package_for_user(request, name)
    row = get_object_or_404(package.versions.defer("data"), version=version)
    row.remove()
    messages.success(request, f"Version {version} deleted. Crawls already running it keep it.")
    if Package.objects.filter(pk=package.pk).exists():
        return redirect(package)
    return redirect("dashboard:package-list")


@require_POST
def package_delete(request, name):
    package = _get_package_for_user(request, name)
    package.delete()
    messages.success(request, f"Package {name} and all its versions deleted. Crawls already running keep their code.")
    return redirect("dashboard:package-list")
