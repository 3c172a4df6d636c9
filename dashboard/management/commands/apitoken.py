from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from dashboard.models import ApiToken, TokenError


class Command(BaseCommand):
    help = "Create an API token for USERNAME and print it (only its hash is stored)."

    def add_arguments(self, parser):
        parser.add_argument("username")
        parser.add_argument("--name", default="manage.py apitoken", help="What the token is for.")
        parser.add_argument("--expires", default="never",
                            help='"never" (default), a number of days like "30d" or of hours like "12h".')

    def handle(self, username, name, expires, **options):
        user = get_user_model().objects.filter(username=username, is_active=True).first()
        if user is None:
            raise CommandError(f"No active user named {username!r}")
        try:
            token, secret = ApiToken.create_for(user, name, ApiToken.parse_expiry(expires))
        except TokenError as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(secret)
        until = f", expires {token.expires_at:%Y-%m-%d %H:%M} UTC" if token.expires_at else ""
        self.stderr.write(f"Token “{token.name}” ({token.public_id}{until}). Use it as: "
                          f"Authorization: Bearer {secret[:8]}... (shown once; keep it secret)")
