from django.contrib import messages
from django.contrib.auth.decorators import login_not_required
from django.db import IntegrityError, transaction
from django.http import Http404, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from dashboard import engine, exports, live
from dashboard import items as item_queries
from dashboard.forms import ProjectForm
from dashboard.health import health
from dashboard.models import Crawl, InvalidTransition, Project


def _get_project_for_user(request, pk):
    """The user's own project, or 404 (another owner's project does not exist for them)."""
    return get_object_or_404(Project.objects.for_user(request.user), pk=pk)


def _get_crawl_for_user(request, code):
    """The user's own crawl by its public code, or 404."""
    return get_object_or_404(Crawl.objects.for_user(request.user).select_related("project"), code=code)


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
    form = ProjectForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        project = Project(owner=request.user)
        if _save_project(request, form, project):
            messages.success(request, f"Project “{project.name}” created. Launch it when you are ready.")
            return redirect(project)
    return render(request, "dashboard/project_form.html", {"form": form, "creating": True})


@require_http_methods(["GET", "POST"])
def project_edit(request, pk):
    project = _get_project_for_user(request, pk)
    form = ProjectForm(request.POST or None, initial=ProjectForm.initial_from(project.definition))
    if request.method == "POST" and form.is_valid():
        if _save_project(request, form, project):
            messages.success(request, "Saved. Crawls already running keep the definition they started with.")
            return redirect(project)
    return render(request, "dashboard/project_form.html", {"form": form, "project": project})


@require_GET
def project_detail(request, pk):
    project = _get_project_for_user(request, pk)
    crawls = project.crawls.all()[:50]
    return render(request, "dashboard/project_detail.html", {"project": project, "crawls": crawls})


@require_http_methods(["GET", "POST"])
def project_delete(request, pk):
    project = _get_project_for_user(request, pk)
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
def project_launch(request, pk):
    project = _get_project_for_user(request, pk)
    workers = request.POST.get("workers", "").strip()
    if workers and not workers.isdigit():
        messages.error(request, f"Workers must be a whole number from 1 to 64, not “{workers}”.")
        return redirect(project)
    try:
        crawl = engine.launch(project, workers=int(workers) if workers else None)
    except engine.LaunchError as exc:
        messages.error(request, str(exc))
        return redirect(project)
    crawl.refresh_from_db()
    if crawl.status == crawl.FAILED:
        messages.error(request, crawl.reason)
    return redirect(crawl)


@require_POST
def crawl_control(request, code, action):
    """The crawl page's pause / resume / stop / force stop / cancel / scale buttons."""
    crawl = _get_crawl_for_user(request, code)
    action = action.replace("-", "_")  # URLs spell force_stop as force-stop
    if action not in Crawl.USER_ACTIONS:
        raise Http404("No such action.")
    try:
        if action == "scale":
            workers = request.POST.get("workers", "").strip()
            if not workers.isdigit():
                raise engine.LaunchError(f"Workers must be a whole number from 1 to 64, not “{workers}”.")
            engine.scale(crawl, int(workers))
        else:
            engine.control(crawl, action)
    except (InvalidTransition, engine.LaunchError) as exc:
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
    """Liveness of every component for monitors: booleans and counts only, no secrets."""
    report = health()
    for part in report.values():
        if isinstance(part, dict):
            part.pop("error", None)
    return JsonResponse(report, status=200 if report["ok"] else 503)


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
    return int(value) if value.isdigit() and len(value) < 19 else None


@require_GET
def crawl_items(request, code):
    crawl = _get_crawl_for_user(request, code)
    q = request.GET.get("q", "").strip()
    before = _cursor(request, "before")
    page = item_queries.page(crawl, after=None if before is not None else _cursor(request, "after"),
                             before=before, q=q)
    return render(request, "dashboard/items.html", {
        "crawl": crawl,
        "page": page,
        "q": q,
        "item_count": item_queries.item_count(crawl),
        "formats": list(exports.FORMATS),
    })


@require_GET
def item_json(request, code, key):
    """One item's data, addressed by its stable key (never by a database id)."""
    crawl = _get_crawl_for_user(request, code)
    item = get_object_or_404(crawl.items.only("data"), key=key)
    return JsonResponse(item.data, safe=False, json_dumps_params={"ensure_ascii": False, "indent": 2})


@require_GET
def crawl_export(request, code):
    crawl = _get_crawl_for_user(request, code)
    return exports.export_response(crawl, request.GET.get("format", "jsonl"))


@require_GET
def project_export(request, pk):
    """The latest finished crawl of a project, at a URL that stays the same between runs."""
    project = _get_project_for_user(request, pk)
    crawl = project.crawls.filter(status=Crawl.FINISHED).order_by("-finished_at", "-id").first()
    if crawl is None:
        return JsonResponse({"detail": f"Project {project.name!r} has no finished crawl yet."}, status=404)
    return exports.export_response(crawl, request.GET.get("format", "jsonl"))
