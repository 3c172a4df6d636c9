from django.core.management.base import BaseCommand, CommandError

from dashboard import engine, quotas
from dashboard.models import Crawl, InvalidTransition


class Command(BaseCommand):
    help = "Control a crawl: pause, resume, stop, force_stop, cancel, or scale N (Crawl.LIFECYCLE)."

    def add_arguments(self, parser):
        parser.add_argument("code", help="the crawl's code")
        parser.add_argument("action", choices=list(Crawl.USER_ACTIONS))
        parser.add_argument("workers", nargs="?", type=int, help="for scale: the number of workers")

    def handle(self, code, action, workers=None, **options):
        crawl = Crawl.objects.filter(code=code).select_related("project").first()
        if crawl is None:
            raise CommandError(f"No crawl with code {code!r}")
        try:
            if action == "scale":
                if workers is None:
                    raise CommandError("scale needs the number of workers, e.g. crawlctl CODE scale 4")
                crawl = engine.scale(crawl, workers)
            else:
                crawl = engine.control(crawl, action)
        except (InvalidTransition, engine.LaunchError, quotas.QuotaExceeded) as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(f"Crawl {crawl.code}: {crawl.status}, {crawl.workers} worker(s)")
