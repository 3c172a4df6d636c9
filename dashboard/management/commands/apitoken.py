from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from dashboard.models import ApiToken


class Command(BaseCommand):
    help = "Create an API token for USERNAME and print it (only its hash is stored)."

    def add_arguments(self, parser):
        parser.add_argument("username")

    def handle(self, username, **options):
        user = get_user_model().objects.filter(username=username, is_active=True).first()
        if user is None:
            raise CommandError(f"No active user named {username!r}")
        token = ApiToken.issue(user)
        self.stdout.write(token)
        self.stderr.write(f"Use it as: Authorization: Bearer {token[:8]}... (shown once; keep it secret)")
