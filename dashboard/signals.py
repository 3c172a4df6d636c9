"""A password change revokes every API token of the user (issue 11).

Every way of changing a password (the password change and reset views, the admin, the
`changepassword` command, ``set_password()`` then ``save()``) goes through
``AbstractBaseUser.set_password``, which keeps the new raw password in ``_password`` until the
row is saved. A hash upgrade on login also saves the password field but clears ``_password``
first, so it revokes nothing.
"""

from django.conf import settings
from django.db.models.signals import post_save
from django.dispatch import receiver


@receiver(post_save, sender=settings.AUTH_USER_MODEL, dispatch_uid="crawlsite-revoke-tokens-on-password-change")
def revoke_tokens_on_password_change(sender, instance, created, **kwargs):
    if created or getattr(instance, "_password", None) is None:
        return
    from dashboard.models import ApiToken

    ApiToken.revoke_all(instance)
