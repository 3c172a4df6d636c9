"""Projects (crawl definitions), crawls (runs of a project) and the items they scraped.

A Crawl owns its state machine: every change of status goes through ``Crawl.transition`` which
refuses what DESIGN.md's state diagram forbids.
"""

import hashlib
import re
import secrets
import string
import unicodedata
from datetime import timedelta

from django.conf import settings
from django.db import models, transaction
from django.urls import reverse
from django.utils import timezone

from crawler import definition as crawl_definition

CODE_ALPHABET = string.ascii_lowercase + string.digits


def new_code(length=10):
    return "".join(secrets.choice(CODE_ALPHABET) for _ in range(length))


class ProjectQuerySet(models.QuerySet):
    def for_user(self, user):
        return self.filter(owner=user)


class Project(models.Model):
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="projects")
    name = models.CharField(max_length=200)
    definition = models.JSONField(help_text="The validated crawl definition (docs/crawler.md).")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = ProjectQuerySet.as_manager()

    class Meta:
        ordering = ["name", "id"]
        constraints = [models.UniqueConstraint(fields=["owner", "name"], name="unique_project_name_per_owner")]

    def __str__(self):
        return self.name

    def get_absolute_url(self):
        return reverse("dashboard:project-detail", args=[self.pk])

    def set_definition(self, definition):
        """Store an already validated definition; the name lives in both places."""
        self.definition = definition
        self.name = definition["name"]

    @property
    def uses_custom_spider(self):
        return bool(self.definition.get("spider"))

    def latest_crawl(self):
        return self.crawls.order_by("-created_at", "-id").first()


class InvalidTransition(Exception):
    """A crawl cannot go from its current status to the one asked for; the message says why."""


class CrawlQuerySet(models.QuerySet):
    def for_user(self, user):
        return self.filter(project__owner=user)

    def active(self):
        return self.filter(status__in=Crawl.ACTIVE)


class Crawl(models.Model):
    PENDING = "pending"
    RUNNING = "running"
    PAUSING = "pausing"
    PAUSED = "paused"
    STOPPING = "stopping"
    STOPPED = "stopped"
    FINISHING = "finishing"
    FINISHED = "finished"
    CANCELLED = "cancelled"
    FAILED = "failed"
    STATUS_CHOICES = [
        (PENDING, "Pending"),
        (RUNNING, "Running"),
        (PAUSING, "Pausing"),
        (PAUSED, "Paused"),
        (STOPPING, "Stopping"),
        (STOPPED, "Stopped"),
        (FINISHING, "Finishing"),
        (FINISHED, "Finished"),
        (CANCELLED, "Cancelled"),
        (FAILED, "Failed"),
    ]
    # Crawls the conductor watches (workers may be alive).
    ACTIVE = (PENDING, RUNNING, PAUSING, PAUSED, STOPPING, FINISHING)
    TERMINAL = (FINISHED, CANCELLED, FAILED)
    TRANSITIONS = {
        PENDING: {RUNNING},
        RUNNING: {PAUSING, PAUSED, STOPPING, FINISHING},
        PAUSING: {PAUSED, RUNNING, STOPPING},
        PAUSED: {RUNNING, STOPPING, CANCELLED},
        STOPPING: {STOPPED},
        STOPPED: {RUNNING, CANCELLED},
        FINISHING: {FINISHED},
        FINISHED: set(),
        CANCELLED: set(),
        FAILED: set(),
    }

    code = models.CharField(max_length=32, unique=True, default=new_code, editable=False)
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="crawls")
    definition = models.JSONField(help_text="Frozen copy of the project's definition at launch.")
    status = models.CharField(max_length=16, choices=STATUS_CHOICES, default=PENDING, db_index=True)
    reason = models.TextField(blank=True, help_text="Why the crawl failed or ended, for people.")
    workers = models.PositiveSmallIntegerField(default=1, help_text="Workers asked for.")
    launched_workers = models.PositiveSmallIntegerField(default=0, help_text="Worker ids w1..wN handed out so far.")
    stats = models.JSONField(default=dict, blank=True, help_text="Counters recorded when the crawl ended.")
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    objects = CrawlQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self):
        return f"{self.project.name} · {self.code}"

    def get_absolute_url(self):
        return reverse("dashboard:crawl-detail", args=[self.code])

    @property
    def is_active(self):
        return self.status in self.ACTIVE

    @property
    def is_terminal(self):
        return self.status in self.TERMINAL

    def can_transition(self, status):
        return status == self.FAILED and not self.is_terminal or status in self.TRANSITIONS[self.status]

    def transition(self, status, reason=""):
        """Change status if the state machine allows it, else raise InvalidTransition."""
        if not self.can_transition(status):
            raise InvalidTransition(f"a {self.status} crawl cannot become {status}")
        self.status = status
        fields = ["status"]
        if reason:
            self.reason = reason
            fields.append("reason")
        if status == self.RUNNING and self.started_at is None:
            self.started_at = timezone.now()
            fields.append("started_at")
        if status in self.TERMINAL or status == self.STOPPED:
            self.finished_at = timezone.now()
            fields.append("finished_at")
        self.save(update_fields=fields)

    def fail(self, reason):
        self.transition(self.FAILED, reason=reason)

    def finish(self, status, stats=None, reason=""):
        """End the crawl as ``status`` (finished, stopped, cancelled, failed), keeping final counters."""
        if stats is not None:
            self.stats = stats
            self.save(update_fields=["stats"])
        self.transition(status, reason=reason)

    def next_worker_ids(self, count):
        """Hand out ``count`` fresh worker ids (w1, w2, ...), never reusing one."""
        with transaction.atomic():
            crawl = Crawl.objects.select_for_update().get(pk=self.pk)
            first = crawl.launched_workers + 1
            crawl.launched_workers += count
            crawl.save(update_fields=["launched_workers"])
        self.launched_workers = crawl.launched_workers
        return [f"w{n}" for n in range(first, first + count)]

    @property
    def duration(self):
        if not self.started_at:
            return None
        end = self.finished_at or timezone.now()
        return end - self.started_at

    def limits(self):
        return self.definition.get("limits", {})


class Item(models.Model):
    crawl = models.ForeignKey(Crawl, on_delete=models.CASCADE, related_name="items")
    key = models.CharField(max_length=100, help_text="Stable item key: request fingerprint and index.")
    url = models.TextField()
    data = models.JSONField()
    worker = models.CharField(max_length=64, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["id"]
        constraints = [models.UniqueConstraint(fields=["crawl", "key"], name="unique_item_key_per_crawl")]
        # Keyset pages, exports and the export snapshot's MAX(id) are range scans on this.
        indexes = [models.Index(fields=["crawl", "id"], name="item_crawl_id_idx")]

    def __str__(self):
        return self.key


class TokenError(ValueError):
    """A token name or expiry a user asked for is not acceptable; the message says why."""


class ExpiredToken(Exception):
    """The bearer token exists but its expiry has passed."""

    def __init__(self, token):
        self.token = token
        super().__init__(
            f"This API token ({token.prefix}…, “{token.name}”) expired at "
            f"{token.expires_at:%Y-%m-%d %H:%M} UTC; create a new one on your account page."
        )


def new_token_id():
    return "tok_" + new_code(12)


class ApiTokenQuerySet(models.QuerySet):
    def for_user(self, user):
        return self.filter(user=user)


class ApiToken(models.Model):
    """A bearer token for scripts. Only its SHA-256 is stored; the token is shown once.

    Users list, create and revoke their own tokens (account page, /api/tokens); a token may
    expire; changing the password revokes every token of the user (see ``dashboard.signals``).
    """

    NAME_MAX = 100
    MAX_PER_USER = 100
    # Offered on the account page; the API and the command take any "<N>d" / "<N>h" in range.
    EXPIRY_CHOICES = [("never", "Never"), ("1d", "1 day"), ("7d", "7 days"), ("30d", "30 days"),
                      ("90d", "90 days"), ("365d", "1 year")]
    EXPIRY_MAX = timedelta(days=3650)
    _EXPIRY = re.compile(r"([0-9]{1,5})([dh])")

    public_id = models.CharField(max_length=20, unique=True, default=new_token_id, editable=False,
                                 help_text="Public identity in URLs and the API (never the database id).")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens")
    name = models.CharField(max_length=NAME_MAX, help_text="What the token is for, e.g. the script using it.")
    digest = models.CharField(max_length=64, unique=True)
    prefix = models.CharField(max_length=8, help_text="First characters, to tell tokens apart.")
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True, help_text="Refused from then on; empty = never.")

    objects = ApiTokenQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self):
        return f"{self.user} · {self.name} · {self.prefix}…"

    @property
    def is_expired(self):
        return self.expires_at is not None and self.expires_at <= timezone.now()

    @staticmethod
    def hash(token):
        return hashlib.sha256(token.encode()).hexdigest()

    @classmethod
    def clean_name(cls, name):
        if not isinstance(name, str) or not name.strip():
            raise TokenError("Give the token a name, e.g. the script that will use it.")
        name = name.strip()
        if len(name) > cls.NAME_MAX:
            raise TokenError(f"The name is {len(name)} characters long; at most {cls.NAME_MAX} are allowed.")
        if any(unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp") for ch in name):
            raise TokenError("The name may not contain control characters or line breaks.")
        return name

    @classmethod
    def parse_expiry(cls, text):
        """"never" (or empty) -> None; "<N>d" days or "<N>h" hours -> a timedelta, up to 10 years."""
        if text is None or text in ("", "never"):
            return None
        match = cls._EXPIRY.fullmatch(text) if isinstance(text, str) else None
        if match is None:
            raise TokenError(
                f"Unknown expiry {str(text)[:40]!r}: use \"never\", a number of days like \"30d\" or of hours like \"12h\"."
            )
        number, unit = int(match.group(1)), match.group(2)
        delta = timedelta(days=number) if unit == "d" else timedelta(hours=number)
        if not timedelta(hours=1) <= delta <= cls.EXPIRY_MAX:
            raise TokenError("The expiry must be between 1 hour and 3650 days.")
        return delta

    @classmethod
    def issue(cls, user, name="API token", expires_in=None):
        """Create a token and return its secret only (see :meth:`create_for` for the row too)."""
        return cls.create_for(user, name, expires_in)[1]

    @classmethod
    def create_for(cls, user, name, expires_in=None):
        """A new token for ``user``: returns the row and the secret, which is never stored."""
        name = cls.clean_name(name)
        if cls.objects.for_user(user).count() >= cls.MAX_PER_USER:
            raise TokenError(f"You have {cls.MAX_PER_USER} tokens already; revoke some first.")
        token = "cs_" + secrets.token_urlsafe(32)
        expires_at = timezone.now() + expires_in if expires_in else None
        row = cls.objects.create(user=user, name=name, digest=cls.hash(token), prefix=token[:8], expires_at=expires_at)
        return row, token

    @classmethod
    def authenticate(cls, token):
        """The token row for ``token``, or None if unknown, revoked or its user inactive;
        raises ExpiredToken for a known token past its expiry. Records the use."""
        if not isinstance(token, str) or not token:
            return None
        found = cls.objects.select_related("user").filter(digest=cls.hash(token), user__is_active=True).first()
        if found is None:
            return None
        if found.is_expired:
            raise ExpiredToken(found)
        cls.objects.filter(pk=found.pk).update(last_used_at=timezone.now())
        return found

    @classmethod
    def user_for(cls, token):
        """The active user of a valid token, or None (unknown, revoked or expired)."""
        try:
            found = cls.authenticate(token)
        except ExpiredToken:
            return None
        return found.user if found else None

    @classmethod
    def revoke_all(cls, user):
        return cls.objects.for_user(user).delete()[0]


def validate_definition(data):
    """The one validator: returns the normalized definition or raises DefinitionError.

    A custom spider is checked against the names of the operator's ``CRAWLSITE_SPIDERS``;
    nothing is imported.
    """
    return crawl_definition.validate(data, spiders=settings.CRAWLSITE_SPIDERS)


def frozen_definition(definition):
    """A validated definition plus what the operator decides for a crawl of it, frozen at launch:
    the dotted path of its custom spider (``spider_class``, imported by the workers only) and
    the item size limit. Users never set ``operator``: the validator refuses the field."""
    operator = {"max_item_bytes": settings.CRAWLSITE_MAX_ITEM_BYTES}
    if definition.get("spider"):
        operator["spider_class"] = settings.CRAWLSITE_SPIDERS[definition["spider"]]
    return {**definition, "operator": operator}
