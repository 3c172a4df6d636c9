import secrets

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand

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
        user, _ = User.objects.get_or_create(username=username)
        user.is_staff = user.is_superuser = user.is_active = True
        user.set_password(password)
        user.save()
        shown = "(from ADMIN_PASSWORD)" if given else password
        self.stdout.write(self.style.SUCCESS(
            f"Created the admin account. Log in with username: {username}  password: {shown}"
        ))
        if not given:
            self.stdout.write("This password is shown once; change it with: python manage.py changepassword admin")
