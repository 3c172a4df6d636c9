import secrets

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from django.db import IntegrityError, transaction

from crawlsite.env import env_str


class Command(BaseCommand):
    help = (
        "Make sure a superuser exists. On first run creates ADMIN_USERNAME (default 'admin') with "
        "ADMIN_PASSWORD or a generated password, and prints how to log in."
    )

    def handle(self, *args, **options):
        User = get_user_model()
        if User.objects.filter(is_superuser=True, is_active=True).exists():
            self.stdout.write(
                "Admin account exists (forgot the password? python manage.py changepassword admin)."
            )
            return
        username = env_str("ADMIN_USERNAME", "admin")
        given = env_str("ADMIN_PASSWORD")
        password = given or secrets.token_urlsafe(12)
        # Never promote an account someone else may hold: only a new one becomes the superuser.
        refusal = (
            f"An account named {username!r} already exists and is not an active superuser; "
            "ensureadmin never promotes or changes an existing account. Set ADMIN_USERNAME to a new "
            "name, or promote that account yourself if it is yours (python manage.py shell)."
        )
        if User.objects.filter(username=username).exists():
            raise CommandError(refusal)
        try:
            with transaction.atomic():
                User.objects.create_superuser(username=username, password=password)
        except IntegrityError:  # created by someone else between the check and here
            raise CommandError(refusal) from None
        shown = "(from ADMIN_PASSWORD)" if given else password
        self.stdout.write(self.style.SUCCESS(
            f"Created the admin account. Log in with username: {username}  password: {shown}"
        ))
        if not given:
            self.stdout.write("This password is shown once; change it with: python manage.py changepassword admin")
