from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand

from dashboard.models import Project, validate_definition
from demosite.server import recommended_definition

DEMO_NAME = "Demo shop"


def demo_definition(url):
    return validate_definition({**recommended_definition(url, name=DEMO_NAME), "workers": 2})


class Command(BaseCommand):
    help = "Make sure the first admin owns the demo project crawling the local demo shop at --url."

    def add_arguments(self, parser):
        parser.add_argument("--url", required=True, help="base URL of the demo site")

    def handle(self, url, **options):
        admin = get_user_model().objects.filter(is_superuser=True, is_active=True).order_by("pk").first()
        if admin is None:
            self.stderr.write("No admin account; run ensureadmin first.")
            return
        definition = demo_definition(url)
        project = Project.objects.filter(owner=admin, name=DEMO_NAME).first()
        if project is None:
            project = Project(owner=admin)
            project.set_definition(definition)
            project.save()
            self.stdout.write(f"Created the demo project (crawls {definition['start_urls'][0]}).")
        elif project.definition["start_urls"] != definition["start_urls"]:
            # The demo site moved (another DEMO_PORT): follow it, keep the rest of the user's edits.
            project.definition.update(start_urls=definition["start_urls"], allowed_domains=definition["allowed_domains"])
            project.save(update_fields=["definition", "updated_at"])
