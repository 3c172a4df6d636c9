import time

from django.core.management.base import BaseCommand, CommandError

from crawler import state
from dashboard import engine, quotas
from dashboard.models import Crawl, Project
from dashboard.redis import get_redis


def find_project(ref):
    """A project by its public code, or by name when that name is unique."""
    project = Project.objects.filter(code=ref).first()
    if project:
        return project
    matches = list(Project.objects.filter(name=ref).select_related("owner"))
    if len(matches) == 1:
        return matches[0]
    if matches:
        listing = ", ".join(f"{p.code} (owner {p.owner})" for p in matches)
        raise CommandError(f"Several projects are named {ref!r}; give the code: {listing}")
    raise CommandError(f"No project with code or name {ref!r}")


class Command(BaseCommand):
    help = "Launch a crawl of a project (by code or name); --wait follows it until it ends."

    def add_arguments(self, parser):
        parser.add_argument("project", help="project code or name")
        parser.add_argument("--workers", type=int, default=None, help="number of workers (default: the project's)")
        parser.add_argument("--wait", action="store_true", help="wait for the crawl to end, printing progress")

    def handle(self, project, workers=None, wait=False, **options):
        project = find_project(project)
        try:
            crawl = engine.launch(project, workers=workers, trigger=Crawl.TRIGGER_API)
        except (engine.LaunchError, quotas.QuotaExceeded) as exc:
            raise CommandError(str(exc)) from None
        crawl.refresh_from_db()
        self.stdout.write(f"Crawl {crawl.code} of {project.name!r}: {crawl.status} on {crawl.workers} worker(s)")
        if crawl.status == Crawl.FAILED:
            raise CommandError(crawl.reason)
        if not wait:
            return
        redis = get_redis()
        last = None
        while True:
            crawl.refresh_from_db()
            counters = state.read_counters(redis, crawl.code)
            line = (
                f"{crawl.status}: {counters['pages']} pages, {counters['items']} items, "
                f"{counters['queued']} queued, {counters['in_flight']} in flight, {counters['errors']} errors"
            )
            if line != last:
                self.stdout.write(line)
                last = line
            if crawl.is_terminal or crawl.status == Crawl.STOPPED:
                break
            time.sleep(0.5)
        stored = crawl.items.count()
        self.stdout.write(f"Crawl {crawl.code} {crawl.status}: {stored} items stored")
        if crawl.status != Crawl.FINISHED:
            raise CommandError(f"Crawl {crawl.code} ended {crawl.status}: {crawl.reason}")
