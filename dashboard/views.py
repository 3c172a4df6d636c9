from django.contrib.auth.decorators import login_not_required
from django.http import JsonResponse
from django.shortcuts import get_object_or_404, render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from dashboard.health import health
from dashboard.models import Crawl, Project


def _get_project_for_user(request, pk):
    """The user's own project, or 404 (another owner's project does not exist for them)."""
    return get_object_or_404(Project.objects.for_user(request.user), pk=pk)


def _get_crawl_for_user(request, code):
    """The user's own crawl by its public code, or 404."""
    return get_object_or_404(Crawl.objects.for_user(request.user).select_related("project"), code=code)


@require_GET
def overview(request):
    return render(request, "dashboard/overview.html", {"health": health()})


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
