"""Projects (crawl definitions), crawls (runs of a project) and the items they scraped.

A Crawl owns its lifecycle: ``Crawl.LIFECYCLE`` is the one table of actions (action -> allowed
from-states -> to-state). Every change is a compare-and-set on the status, and its Redis and RQ
side effects run after commit (docs/operations.md, "Crawl states").
"""

import hashlib
import re
import secrets
import string
from dataclasses import dataclass
import unicodedata
from datetime import timedelta
from urllib.parse import urlsplit

from django.conf import settings
from django.db import models, transaction
from django.db.models import F, Value
from django.db.models.functions import Coalesce
from django.dispatch import Signal
from django.urls import reverse
from django.utils import timezone
from redis.exceptions import RedisError

from crawler import definition as crawl_definition
from crawler import packages as crawl_packages
from crawler import keys
from crawler import leases as crawl_leases
from crawler import state as crawl_state
from dashboard import jobs
from dashboard.redis import get_redis

CODE_ALPHABET = string.ascii_lowercase + string.digits

# Sent once per end of a run (finished, failed, stopped, cancelled while paused), after commit,
# with ``crawl`` and ``action`` (the lifecycle action that ended it). Monitors listen.
run_ended = Signal()


def new_code(length=10):
    return "".join(secrets.choice(CODE_ALPHABET) for _ in range(length))


class ProjectQuerySet(models.QuerySet):
    def for_user(self, user):
        return self.filter(owner=user)


class Project(models.Model):
    code = models.CharField(max_length=32, unique=True, default=new_code, editable=False,
                            help_text="Public code used in URLs and the API, like a crawl's.")
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
        return reverse("dashboard:project-detail", args=[self.code])

    def set_definition(self, definition):
        """Store an already validated definition; the name lives in both places."""
        self.definition = definition
        self.name = definition["name"]

    @classmethod
    def for_deployed_spider(cls, owner, package, spider):
        """``owner``'s project that runs spider ``spider`` of deployed package ``package`` (what
        Scrapyd's schedule.json and the Code page's Run launch), created on first use."""
        found = cls.objects.filter(owner=owner, definition__spider__package=package,
                                   definition__spider__spider=spider).order_by("id").first()
        if found is not None:
            return found
        definition = crawl_definition.default_definition()
        name = f"{package} {spider}"[:190]
        if cls.objects.filter(owner=owner, name=name).exists():
            name = f"{name} ({new_code(4)})"
        definition.update(name=name, item={"url_pattern": "", "selector": "", "fields": []},
                          spider={"package": package, "spider": spider, "version": "", "args": {}})
        return cls.objects.create(owner=owner, name=name, definition=definition)

    @property
    def deployed_spider(self):
        """``{package, spider, version, args}`` when the project runs a deployed spider, else None."""
        spider = self.definition.get("spider")
        return spider if isinstance(spider, dict) else None

    @property
    def uses_custom_spider(self):
        return bool(self.definition.get("spider"))

    def latest_crawl(self):
        return self.crawls.order_by("-created_at", "-id").first()


class InvalidTransition(Exception):
    """An action cannot apply to a crawl in its current status; the message says why (the API's 409)."""


class CrawlQuerySet(models.QuerySet):
    def for_user(self, user):
        return self.filter(project__owner=user)

    def active(self):
        return self.filter(status__in=Crawl.ACTIVE)


@dataclass(frozen=True)
class Action:
    """One row of the lifecycle table: ``name`` moves a crawl from one of ``sources`` to ``target``.

    ``target`` None leaves the status as it is (scale). ``by_user`` actions are the buttons, the
    API's control endpoints and ``crawlctl``; the others are what the conductor observes.
    ``already`` are statuses in which a user is told the action is done already; ``hints`` give
    advice for a status in which it cannot apply.
    """

    name: str
    sources: frozenset
    target: str | None
    by_user: bool = False
    label: str = ""
    already: frozenset = frozenset()
    hints: tuple = ()

    def refusal(self, code, status):
        if status in self.sources:
            return ""
        if status in self.already:
            return f"Crawl {code} is already {status}."
        for hint_status, hint in self.hints:
            if status == hint_status:
                return f"Crawl {code} is {status}: {hint}."
        return f"Cannot {self.label.lower() or self.name} crawl {code}: it is {status}."


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
    STATUSES = tuple(status for status, _label in STATUS_CHOICES)
    # Crawls the conductor watches (workers may be alive).
    ACTIVE = (PENDING, RUNNING, PAUSING, PAUSED, STOPPING, FINISHING)
    TERMINAL = (FINISHED, CANCELLED, FAILED)
    # States that must end by themselves within a bound (settings.CRAWL_*_BOUND).
    TRANSIENT = (PAUSING, STOPPING, FINISHING)

    # The lifecycle: the one table behind the buttons, the API's 409s, crawlctl and the conductor.
    LIFECYCLE = {a.name: a for a in (
        # Asked by a user (page, API, crawlctl).
        Action("pause", frozenset({RUNNING}), PAUSING, True, "Pause", already=frozenset({PAUSING, PAUSED})),
        Action("resume", frozenset({PAUSING, PAUSED, STOPPED}), RUNNING, True, "Resume",
               already=frozenset({RUNNING})),
        Action("stop", frozenset({RUNNING, PAUSING, PAUSED}), STOPPING, True, "Stop",
               already=frozenset({STOPPING, STOPPED})),
        Action("force_stop", frozenset({PAUSING, STOPPING, FINISHING}), STOPPED, True, "Force stop",
               already=frozenset({STOPPED})),
        Action("cancel", frozenset({PAUSED, STOPPED}), CANCELLED, True, "Cancel",
               hints=((RUNNING, "pause or stop it before cancelling"),
                      (PAUSING, "pause or stop it before cancelling"),
                      (STOPPING, "wait until it is stopped (or force stop it) before cancelling"))),
        Action("scale", frozenset({RUNNING, PAUSING, PAUSED}), None, True, "Scale"),
        # Observed by the conductor.
        Action("start", frozenset({PENDING}), RUNNING),
        Action("paused", frozenset({PAUSING}), PAUSED),
        Action("stopped", frozenset({STOPPING}), STOPPED),
        Action("workers_lost", frozenset({RUNNING}), STOPPED),
        Action("finish", frozenset({RUNNING}), FINISHING),
        Action("finished", frozenset({FINISHING}), FINISHED),
        Action("fail", frozenset(ACTIVE), FAILED),
    )}
    USER_ACTIONS = tuple(name for name, a in LIFECYCLE.items() if a.by_user)

    # What started a crawl (issue 14's schedules and issue 13's Scrapyd API add their own).
    TRIGGER_USER = "user"
    TRIGGER_API = "api"
    TRIGGER_SCHEDULE = "schedule"
    TRIGGER_SCRAPYD = "scrapyd"
    TRIGGER_CHOICES = [
        (TRIGGER_USER, "User"),
        (TRIGGER_API, "API"),
        (TRIGGER_SCHEDULE, "Schedule"),
        (TRIGGER_SCRAPYD, "Scrapyd API"),
    ]

    code = models.CharField(max_length=32, unique=True, default=new_code, editable=False)
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="crawls")
    trigger = models.CharField(max_length=16, choices=TRIGGER_CHOICES, default=TRIGGER_USER,
                               help_text="What started the crawl: the web UI, the API, a schedule or the Scrapyd API.")
    schedule = models.ForeignKey("Schedule", null=True, blank=True, on_delete=models.SET_NULL, related_name="crawls",
                                 help_text="The schedule that started it (trigger 'schedule').")
    definition = models.JSONField(help_text="Frozen copy of the project's definition at launch.")
    status = models.CharField(max_length=16, choices=STATUS_CHOICES, default=PENDING, db_index=True)
    status_changed_at = models.DateTimeField(default=timezone.now, help_text="When the status last changed.")
    reason = models.TextField(blank=True, help_text="Why the crawl failed or ended, for people.")
    stalled_since = models.DateTimeField(null=True, blank=True,
                                         help_text="Set while a running crawl makes no progress with work queued.")
    stalled_reason = models.TextField(blank=True)
    workers = models.PositiveSmallIntegerField(default=1, help_text="Workers asked for.")
    launched_workers = models.PositiveSmallIntegerField(default=0, help_text="Worker ids w1..wN handed out so far.")
    stats = models.JSONField(default=dict, blank=True, help_text="Counters recorded when the crawl ended.")
    checks = models.JSONField(default=list, blank=True,
                              help_text="The project's monitors checked at the run's end: kind, field, passed, value, threshold.")
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

    # -- the table, read ---------------------------------------------------------------------------

    @classmethod
    def allowed_statuses(cls, action):
        """Every status in which ``action`` applies (the page keeps its buttons in step with this)."""
        sources = cls.LIFECYCLE[action].sources
        return [status for status in cls.STATUSES if status in sources]

    def refusal(self, action):
        """Why ``action`` cannot apply to this crawl now, or "" when it can."""
        return self.LIFECYCLE[action].refusal(self.code, self.status)

    def can(self, action):
        return not self.refusal(action)

    # -- the table, applied: compare-and-set -------------------------------------------------------

    def _apply(self, action, *, reason=None, stats=None, effects=None, announce=True, **fields):
        """Move the crawl along ``action`` if its status in the database is still the one this
        object was read with (and one of the action's sources): ``UPDATE ... WHERE status IN (...)``.
        Returns whether this call made the change; ``effects`` (Redis, RQ) then run after commit.
        A change that ends a run sends ``run_ended`` after commit too, unless ``announce`` is
        False: then the caller sends it once the run's last items and counters are stored.
        A row read earlier is never saved."""
        act = self.LIFECYCLE[action]
        now = timezone.now()
        if act.target is not None:
            fields.update(status=act.target, status_changed_at=now, stalled_since=None, stalled_reason="")
            if act.target == self.RUNNING:
                fields.update(started_at=Coalesce(F("started_at"), Value(now)), finished_at=None)
            elif act.target in self.TERMINAL or act.target == self.STOPPED:
                fields["finished_at"] = now
        if reason is not None:
            fields["reason"] = reason
        if stats is not None:
            fields["stats"] = stats
        # From the status this decision was made on only: a resume decided on a stopped crawl
        # (relaunch workers) must not apply to a crawl that became paused meanwhile.
        sources = act.sources & {self.status}
        with transaction.atomic():
            changed = Crawl.objects.filter(pk=self.pk, status__in=sources).update(**fields) if sources else 0
            if changed and effects is not None:
                transaction.on_commit(effects)
            if changed and announce and self.ends_run(action):
                transaction.on_commit(lambda: self.run_ended(action))
        self.refresh_from_db(fields=["status", "status_changed_at", "reason", "stats", "started_at",
                                     "finished_at", "stalled_since", "stalled_reason", "workers",
                                     "launched_workers"])
        return bool(changed)

    def ends_run(self, action):
        """Whether ``action`` from the current status ends a run: finished, failed, stopped (by a
        user, force or lost workers), or cancelled while paused (a stopped run ended already)."""
        target = self.LIFECYCLE[action].target
        return target in (self.FINISHED, self.FAILED, self.STOPPED) or (
            target == self.CANCELLED and self.status != self.STOPPED)

    def run_ended(self, action):
        """After the commit of a run's end: tell the ``run_ended`` receivers (the run's history,
        then its monitors: dashboard/monitors.py). A receiver's error is logged and never breaks
        the caller."""
        run_ended.send_robust(sender=Crawl, crawl=self, action=action)

    def _act(self, action, **kwargs):
        """A user's action: applied, or InvalidTransition with the reason it cannot apply now."""
        refusal = self.refusal(action)
        if not refusal and self._apply(action, **kwargs):
            return self
        raise InvalidTransition(refusal or self.refusal(action) or f"Crawl {self.code} changed meanwhile; try again.")

    def _control(self, value):
        return lambda: crawl_state.set_control(get_redis(), self.code, value)

    # Users' actions (buttons, API, crawlctl). Each raises InvalidTransition when refused.

    def pause(self):
        return self._act("pause", effects=self._control("pause"))

    def resume(self):
        relaunch = self.status == self.STOPPED
        code, definition, label = self.code, self.definition, self.project.name

        def effects():
            redis = get_redis()
            if relaunch and not redis.exists(keys.definition(code)):
                # Redis lost the crawl (no append-only file?): start again from the seeds.
                crawl_state.launch(redis, code, definition)
            crawl_state.set_control(redis, code, "run")
            if relaunch:
                self.put_code(redis, only_if_missing=True)  # Redis lost it too: from the database
                jobs.enqueue(code, definition, ids, label)

        with transaction.atomic():
            self._act("resume", reason="", effects=effects)
            ids = self.next_worker_ids(self.workers) if relaunch else []
        return self

    def stop(self):
        return self._act("stop", effects=self._control("stop"))

    def cancel(self, announce=True):
        """Cancelled for good. The caller deletes the Redis state once remaining items are stored
        (dashboard.engine.control does, and announces the run's end itself: ``announce``)."""
        code, launched = self.code, self.launched_workers

        def effects():
            crawl_state.set_control(get_redis(), code, "stop")
            jobs.cancel_waiting(code, jobs.worker_ids(launched))

        return self._act("cancel", reason="Cancelled by its owner.", effects=effects, announce=announce)

    def force_stop(self, stats=None, announce=True):
        """Stopped now, whatever the workers do: control ``stop``, every worker's leases back in
        the queue, every worker marked gone. Queue and dedupe stay, so a resume carries on.
        ``announce`` False: the caller sends ``run_ended`` once the final counters are stored."""
        code, launched = self.code, self.launched_workers

        def effects():
            redis = get_redis()
            crawl_state.set_control(redis, code, "stop")
            crawl_leases.force_release(redis, code, "force-stopped by its owner")
            jobs.cancel_waiting(code, jobs.worker_ids(launched))

        return self._act("force_stop", stats=stats, effects=effects, announce=announce,
                         reason="Force-stopped: every worker's requests were put back in the queue. "
                                "Resume to continue.")

    def scale(self, workers, alive):
        """Run ``workers`` workers; ``alive`` are the ids working (or about to) now, oldest first."""
        code, definition, label = self.code, self.definition, self.project.name
        with transaction.atomic():
            if self.refusal("scale"):
                raise InvalidTransition(self.refusal("scale"))
            locked = Crawl.objects.select_for_update().filter(pk=self.pk, status__in=self.LIFECYCLE["scale"].sources)
            if not locked.update(workers=workers):
                self.refresh_from_db(fields=["status"])
                raise InvalidTransition(self.refusal("scale") or f"Crawl {code} changed meanwhile; try again.")
            self.workers = workers
            if workers > len(alive):
                ids = self.next_worker_ids(workers - len(alive))
                transaction.on_commit(lambda: jobs.enqueue(code, definition, ids, label))
            elif workers < len(alive):
                retiring = alive[workers:]

                def effects():
                    crawl_state.retire_workers(get_redis(), code, retiring)
                    jobs.cancel_waiting(code, retiring)

                transaction.on_commit(effects)
        return self

    # What the conductor (or the launch) observed. Each returns whether it made the change.

    def mark_started(self):
        return self._apply("start")

    def mark_paused(self):
        return self._apply("paused")

    def mark_stopped(self, stats, reason=None):
        code, launched = self.code, self.launched_workers
        return self._apply("stopped", stats=stats, reason=reason,
                           effects=lambda: jobs.cancel_waiting(code, jobs.worker_ids(launched)))

    def mark_workers_lost(self, stats, reason):
        """Every worker is gone with work left. Queue and dedupe are intact: a resume continues."""
        code, launched = self.code, self.launched_workers

        def effects():
            # A worker job still queued in RQ must not start crawling a stopped crawl later on.
            crawl_state.set_control(get_redis(), code, "stop")
            jobs.cancel_waiting(code, jobs.worker_ids(launched))

        return self._apply("workers_lost", stats=stats, reason=reason, effects=effects)

    def begin_finishing(self, reason=""):
        code, launched = self.code, self.launched_workers

        def effects():
            crawl_state.set_control(get_redis(), code, "finish")
            jobs.cancel_waiting(code, jobs.worker_ids(launched))

        return self._apply("finish", reason=reason, effects=effects)

    def mark_finished(self, stats):
        return self._apply("finished", stats=stats, effects=self.drop_code)

    def fail(self, reason):
        return self._apply("fail", reason=reason, effects=self.drop_code)

    # -- deployed code (docs/deploy.md) ----------------------------------------------------------------

    def deployed_version(self):
        """``{name, version, sha256}`` of the deployed version this crawl runs, frozen at launch."""
        return (self.definition.get("operator") or {}).get("package")

    def put_code(self, redis, only_if_missing=False):
        """The deployed version's bytes into the crawl's Redis state (key named by its sha256),
        where its workers fetch them. False if the crawl runs a version gone from the database."""
        frozen = self.deployed_version()
        if not frozen:
            return True
        key = keys.package(self.code, frozen["sha256"])
        if only_if_missing and redis.exists(key):
            return True
        data = (PackageVersion.objects.filter(package__owner_id=self.project.owner_id, sha256=frozen["sha256"])
                .values_list("data", flat=True).first())
        if data is None:
            return False
        redis.set(key, bytes(data))
        return True

    def drop_code(self):
        """A crawl that ended for good no longer needs its copy of the deployed code in Redis."""
        frozen = self.deployed_version()
        if frozen:
            try:
                get_redis().delete(keys.package(self.code, frozen["sha256"]))
            except RedisError:  # the crawl's other keys stay too; nothing depends on this one
                pass

    # -- stalls (a flag on a running crawl, not a state) -------------------------------------------

    def flag_stalled(self, reason):
        """Set (or update) the stalled flag of a running crawl; returns whether the row changed."""
        rows = Crawl.objects.filter(pk=self.pk, status=self.RUNNING)
        changed = rows.filter(stalled_since__isnull=True).update(stalled_since=timezone.now(), stalled_reason=reason)
        if not changed:
            changed = rows.exclude(stalled_reason=reason).update(stalled_reason=reason)
        if changed:
            self.refresh_from_db(fields=["stalled_since", "stalled_reason"])
        return bool(changed)

    def clear_stalled(self):
        changed = Crawl.objects.filter(pk=self.pk, stalled_since__isnull=False).update(stalled_since=None,
                                                                                      stalled_reason="")
        if changed:
            self.stalled_since, self.stalled_reason = None, ""
        return bool(changed)

    def overdue_since(self, now=None):
        """When a transient status passed its bound (None when it has not, or is not transient)."""
        bound = transient_bound(self.status)
        if bound is None:
            return None
        deadline = self.status_changed_at + timezone.timedelta(seconds=bound)
        return deadline if (now or timezone.now()) >= deadline else None

    def next_worker_ids(self, count):
        """Hand out ``count`` fresh worker ids (w1, w2, ...), never reusing one."""
        with transaction.atomic():
            crawl = Crawl.objects.select_for_update().get(pk=self.pk)
            first = crawl.launched_workers + 1
            Crawl.objects.filter(pk=self.pk).update(launched_workers=F("launched_workers") + count)
        self.launched_workers = first - 1 + count
        return [f"w{n}" for n in range(first, first + count)]

    @property
    def duration(self):
        if not self.started_at:
            return None
        end = self.finished_at or timezone.now()
        return end - self.started_at

    def limits(self):
        return self.definition.get("limits", {})


def transient_bound(status):
    """Seconds a crawl may stay in a transient ``status`` (settings), or None for other statuses."""
    return {
        Crawl.PAUSING: settings.CRAWL_PAUSING_BOUND,
        Crawl.STOPPING: settings.CRAWL_STOPPING_BOUND,
        Crawl.FINISHING: settings.CRAWL_FINISHING_BOUND,
    }.get(status)


class Item(models.Model):
    crawl = models.ForeignKey(Crawl, on_delete=models.CASCADE, related_name="items")
    key = models.CharField(max_length=100, help_text="Stable item key: request fingerprint and index.")
    url = models.TextField()
    data = models.JSONField()
    worker = models.CharField(max_length=64, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    ident = models.CharField(max_length=64, blank=True, default="",
                             help_text="What identifies the item across runs: its unique key when the project "
                                       "has one, else a hash of its URL (run comparisons, 'new since' exports).")
    unique_key = models.CharField(max_length=64, null=True, blank=True,
                                  help_text="Hash of the item's unique key fields; unique within a crawl.")
    invalid = models.BooleanField(default=False, help_text="The item failed the project's validation.")
    errors = models.JSONField(default=list, blank=True, help_text="Why the item is invalid.")

    class Meta:
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint(fields=["crawl", "key"], name="unique_item_key_per_crawl"),
            # NULL (no unique key) never conflicts: only keyed items are unique within a run.
            models.UniqueConstraint(fields=["crawl", "unique_key"], name="unique_item_unique_key_per_crawl"),
        ]
        # Keyset pages, exports and the export snapshot's MAX(id) are range scans on this.
        indexes = [models.Index(fields=["crawl", "id"], name="item_crawl_id_idx"),
                   models.Index(fields=["crawl", "ident"], name="item_crawl_ident_idx")]

    def __str__(self):
        return self.key


class CrawlHistory(models.Model):
    """What a run leaves behind once Redis forgets it (dashboard/history.py keeps it up to date):
    the live chart's time series, the status code histogram, error counts by type, the final
    counters and the last warning and error log lines."""

    crawl = models.OneToOneField(Crawl, on_delete=models.CASCADE, related_name="history")
    series_fields = models.JSONField(default=list, help_text="Column names of one series point.")
    series = models.JSONField(default=list, help_text="The time series, as the crawl page charts it.")
    counters = models.JSONField(default=dict)
    status_codes = models.JSONField(default=dict)
    errors = models.JSONField(default=dict, help_text="Error counts by type.")
    log = models.JSONField(default=list, help_text="The last warning and error log lines, oldest first.")
    updated_at = models.DateTimeField(default=timezone.now)

    def __str__(self):
        return f"history of {self.crawl.code}"


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


DEPLOY_PERMISSION = ("Uploading code needs the 'deploy' permission (staff have it; an administrator can "
                     "grant it in the admin: dashboard | package | Can deploy code).")


def too_large(size=None):
    """The message for an upload over CRAWLSITE_MAX_PACKAGE_BYTES (``size``: its size, if known)."""
    limit = settings.CRAWLSITE_MAX_PACKAGE_BYTES
    return (f"The upload is too large{f' ({size} bytes)' if size is not None else ''}: at most {limit} bytes are "
            "accepted (CRAWLSITE_MAX_PACKAGE_BYTES).")


class DeployError(ValueError):
    """An upload refused; ``field`` names the input at fault (package, version, file)."""

    def __init__(self, field, message):
        self.field = field
        super().__init__(message)


class PackageQuerySet(models.QuerySet):
    def for_user(self, user):
        return self.filter(owner=user)


PACKAGE_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+:-]{0,99}$")


class Package(models.Model):
    """A user's deployed Scrapy project (Scrapyd's "project"): versions of its code (docs/deploy.md).
    It belongs to its uploader, with the same access rules as projects."""

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="packages")
    name = models.CharField(max_length=64)
    created_at = models.DateTimeField(auto_now_add=True)

    objects = PackageQuerySet.as_manager()

    class Meta:
        ordering = ["name", "id"]
        constraints = [models.UniqueConstraint(fields=["owner", "name"], name="unique_package_name_per_owner")]
        permissions = [("deploy", "Can deploy code (upload Scrapy projects that run on the workers)")]

    def __str__(self):
        return self.name

    def get_absolute_url(self):
        return reverse("dashboard:package-detail", args=[self.name])

    @staticmethod
    def may_deploy(user):
        """Uploading code runs it on the workers: staff, or users granted ``dashboard.deploy``."""
        return bool(user.is_active and (user.is_staff or user.has_perm("dashboard.deploy")))

    def latest(self):
        return self.versions.order_by("-uploaded_at", "-id").first()

    def version(self, version=""):
        """The named version, or the latest when ``version`` is empty; None if there is none."""
        if not version:
            return self.latest()
        return self.versions.filter(version=version).first()

    @classmethod
    def catalog(cls, owner):
        """``{package: {version: [spiders]}}`` of ``owner``, versions oldest first (the definition
        validator's view: no code bytes are read)."""
        found = {}
        rows = PackageVersion.objects.filter(package__owner=owner).order_by("uploaded_at", "id")
        for name, version, spiders in rows.values_list("package__name", "version", "spiders"):
            found.setdefault(name, {})[version] = list(spiders)
        return found


class PackageVersion(models.Model):
    """One uploaded version: the archive's bytes (kept in the database, so losing Redis loses no
    code), its sha256, size, the settings module and spiders found by inspection."""

    package = models.ForeignKey(Package, on_delete=models.CASCADE, related_name="versions")
    version = models.CharField(max_length=100)
    kind = models.CharField(max_length=8, choices=[("egg", "egg"), ("zip", "zip")])
    data = models.BinaryField()
    sha256 = models.CharField(max_length=64, db_index=True)
    size = models.PositiveIntegerField()
    settings_module = models.CharField(max_length=200)
    spiders = models.JSONField(default=list)
    uploader = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True,
                                 related_name="+")
    uploaded_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["uploaded_at", "id"]
        constraints = [models.UniqueConstraint(fields=["package", "version"], name="unique_version_per_package")]

    def __str__(self):
        return f"{self.package.name} {self.version}"

    @classmethod
    def add(cls, owner, package, version, data):
        """Store ``data`` (an egg or a zipped Scrapy project) as ``version`` of ``owner``'s package
        ``package`` (created on its first version). The archive is checked and its spiders listed in
        a subprocess first; nothing is stored when anything is wrong (:class:`DeployError`)."""
        if not Package.may_deploy(owner):
            raise PermissionError(DEPLOY_PERMISSION)
        package = package.strip() if isinstance(package, str) else ""
        version = version.strip() if isinstance(version, str) else ""
        if not PACKAGE_NAME_RE.match(package):
            raise DeployError("package", "A package name is 1-64 letters, digits, '_', '.' or '-', "
                                         "starting with a letter or digit.")
        if not VERSION_RE.match(version):
            raise DeployError("version", "A version is 1-100 letters, digits, '_', '.', '+', ':' or '-', "
                                         "starting with a letter or digit.")
        if not isinstance(data, (bytes, bytearray)) or not data:
            raise DeployError("file", "No file was uploaded (an egg, or a zip of a Scrapy project).")
        if len(data) > settings.CRAWLSITE_MAX_PACKAGE_BYTES:
            raise DeployError("file", too_large(len(data)))
        if cls.objects.filter(package__owner=owner, package__name=package, version=version).exists():
            raise DeployError("version", f"Version {version!r} of {package!r} already exists: deploy a new "
                                         "version name (or delete that version first).")
        try:
            found = crawl_packages.inspect(bytes(data), timeout=settings.CRAWLSITE_INSPECT_TIMEOUT)
        except crawl_packages.PackageError as exc:
            raise DeployError("file", str(exc)) from None
        with transaction.atomic():
            row, _ = Package.objects.get_or_create(owner=owner, name=package)
            if cls.objects.filter(package=row, version=version).exists():  # a concurrent upload won
                raise DeployError("version", f"Version {version!r} of {package!r} already exists.")
            return cls.objects.create(
                package=row, version=version, kind=found["kind"], data=bytes(data),
                sha256=crawl_packages.sha256(bytes(data)), size=len(data),
                settings_module=found["settings_module"], spiders=found["spiders"], uploader=owner)

    def remove(self):
        """Delete this version (its package too when it was the last). Crawls that run it keep
        their copy: it is in their own Redis state since launch."""
        package = self.package
        self.delete()
        if not package.versions.exists():
            package.delete()


def validate_definition(data, owner=None):
    """The one validator: returns the normalized definition or raises DefinitionError.

    A custom spider is checked against the names of the operator's ``CRAWLSITE_SPIDERS``, a
    deployed one against ``owner``'s packages (when given); nothing is imported.
    """
    packages = Package.catalog(owner) if owner is not None else None
    return crawl_definition.validate(data, spiders=settings.CRAWLSITE_SPIDERS, packages=packages)


def frozen_definition(definition, owner=None):
    """A validated definition plus what the operator decides for a crawl of it, frozen at launch:
    the dotted path of its custom spider (``spider_class``, imported by the workers only), or the
    deployed version it runs (``package``: resolved version and sha256; the crawl keeps it even if
    the version is deleted later), and the item size limit. Users never set ``operator``: the
    validator refuses the field. A deployed spider that is gone raises DefinitionError."""
    operator = {"max_item_bytes": settings.CRAWLSITE_MAX_ITEM_BYTES}
    spider = definition.get("spider")
    if isinstance(spider, dict):
        found = PackageVersion.objects.filter(package__owner=owner, package__name=spider["package"])
        found = found.filter(version=spider["version"]) if spider["version"] else found.order_by("-uploaded_at", "-id")
        version = found.defer("data").first()
        if version is None:
            raise crawl_definition.DefinitionError({"spider.version": [
                f"Package {spider['package']!r} has no version {spider['version']!r}." if spider["version"]
                else f"Package {spider['package']!r} has no version."]})
        if spider["spider"] not in version.spiders:
            raise crawl_definition.DefinitionError({"spider.spider": [
                f"Version {version.version} of {spider['package']!r} has no spider {spider['spider']!r} "
                f"(it has: {', '.join(version.spiders)})."]})
        operator["package"] = {"name": spider["package"], "version": version.version, "sha256": version.sha256}
    elif spider:
        operator["spider_class"] = settings.CRAWLSITE_SPIDERS[spider]
    return {**definition, "operator": operator}


# --- Schedules (issue 14) -------------------------------------------------------------------------


class ScheduleQuerySet(models.QuerySet):
    def for_user(self, user):
        return self.filter(project__owner=user)


class Schedule(models.Model):
    """A recurring launch of a project. What it means (cron, policies, the step that fires it)
    lives in dashboard/schedules.py; this row is what the conductor claims against."""

    OVERLAP_SKIP = "skip"
    OVERLAP_QUEUE = "queue"
    OVERLAP_PARALLEL = "parallel"
    OVERLAP_CHOICES = [
        (OVERLAP_SKIP, "Skip the fire"),
        (OVERLAP_QUEUE, "Start when the previous run ends"),
        (OVERLAP_PARALLEL, "Run in parallel"),
    ]
    CATCH_UP_ONCE = "once"
    CATCH_UP_SKIP = "skip"
    CATCH_UP_CHOICES = [
        (CATCH_UP_ONCE, "One run for all missed fires"),
        (CATCH_UP_SKIP, "Skip missed fires"),
    ]

    code = models.CharField(max_length=32, unique=True, default=new_code, editable=False,
                            help_text="Public code used in URLs and the API.")
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="schedules")
    cron = models.CharField(max_length=100, help_text="Five cron fields, or @hourly, @daily, @weekly, @monthly.")
    timezone = models.CharField(max_length=64, default="UTC", help_text="IANA time zone the cron is read in.")
    workers = models.PositiveSmallIntegerField(null=True, blank=True,
                                               help_text="Workers per run; empty = the definition's.")
    overlap = models.CharField(max_length=16, choices=OVERLAP_CHOICES, default=OVERLAP_SKIP)
    catch_up = models.CharField(max_length=16, choices=CATCH_UP_CHOICES, default=CATCH_UP_ONCE)
    max_runtime = models.PositiveIntegerField(null=True, blank=True,
                                              help_text="Seconds after which a run is stopped; empty = no limit.")
    enabled = models.BooleanField(default=True)
    next_due = models.DateTimeField(db_index=True,
                                    help_text="The next fire not processed yet (UTC): the step's cursor.")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = ScheduleQuerySet.as_manager()

    class Meta:
        ordering = ["created_at", "id"]

    def __str__(self):
        return f"{self.project.name} · {self.cron} ({self.timezone})"

    def get_absolute_url(self):
        return reverse("dashboard:schedule-detail", args=[self.code])


class ScheduleFire(models.Model):
    """One due time of a schedule, and what became of it. Inserting this row is the claim:
    (schedule, due) is unique, so a fire is launched or skipped once, whichever conductor runs."""

    LAUNCHED = "launched"
    SKIPPED = "skipped"
    QUEUED = "queued"
    OUTCOME_CHOICES = [(LAUNCHED, "Launched"), (SKIPPED, "Skipped"), (QUEUED, "Queued")]

    schedule = models.ForeignKey(Schedule, on_delete=models.CASCADE, related_name="fires")
    due = models.DateTimeField(help_text="When the cron said to fire (UTC).")
    fired_at = models.DateTimeField(help_text="When the conductor processed it (launch, skip or queue).")
    outcome = models.CharField(max_length=16, choices=OUTCOME_CHOICES, db_index=True)
    reason = models.TextField(blank=True, help_text="Why it was skipped or queued, for people.")
    crawl = models.ForeignKey(Crawl, null=True, blank=True, on_delete=models.SET_NULL, related_name="fires")

    class Meta:
        ordering = ["-due", "-id"]
        constraints = [models.UniqueConstraint(fields=["schedule", "due"], name="unique_fire_per_schedule_due")]

    def __str__(self):
        return f"{self.schedule_id} @ {self.due:%Y-%m-%d %H:%M} {self.outcome}"


# -- monitors, notification channels and deliveries (docs/alerts.md) ----------------------------------


def new_monitor_id():
    return "mon_" + new_code(12)


def new_channel_id():
    return "chn_" + new_code(12)


def new_delivery_id():
    return "dlv_" + new_code(12)


class Monitor(models.Model):
    """A check on a project's runs: final ones at run end, ``stalled`` while a run is going on."""

    STATUS = "status"
    ITEMS_MIN = "items_min"
    ITEMS_DROP = "items_drop"
    ERROR_RATE = "error_rate"
    FIELD_COVERAGE = "field_coverage"
    INVALID_MAX = "invalid_max"
    STALLED = "stalled"
    KIND_CHOICES = [
        (STATUS, "Run failed or stopped with an error"),
        (ITEMS_MIN, "Items at least N"),
        (ITEMS_DROP, "Items at least X % of the previous finished run"),
        (ERROR_RATE, "Error rate at most Y %"),
        (FIELD_COVERAGE, "Coverage of a field at least Z %"),
        (INVALID_MAX, "Invalid items at most N"),
        (STALLED, "No progress for M minutes while work is queued"),
    ]
    KINDS = tuple(kind for kind, _label in KIND_CHOICES)
    MAX_PER_PROJECT = 50

    public_id = models.CharField(max_length=20, unique=True, default=new_monitor_id, editable=False)
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="monitors")
    kind = models.CharField(max_length=20, choices=KIND_CHOICES)
    field = models.CharField(max_length=100, blank=True, help_text="The field of a field_coverage monitor.")
    threshold = models.FloatField(null=True, blank=True,
                                  help_text="N, X, Y, Z or M of the kind; none for status.")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["created_at", "id"]

    def __str__(self):
        return f"{self.kind}{' ' + self.field if self.field else ''} ({self.threshold})"


class Channel(models.Model):
    """Where a project's notifications go. The secret (webhook signing key) is never shown back."""

    WEBHOOK = "webhook"
    EMAIL = "email"
    SLACK = "slack"
    KIND_CHOICES = [(WEBHOOK, "Webhook (signed JSON)"), (EMAIL, "Email"), (SLACK, "Slack-compatible webhook")]
    KINDS = tuple(kind for kind, _label in KIND_CHOICES)
    MAX_PER_PROJECT = 20

    public_id = models.CharField(max_length=20, unique=True, default=new_channel_id, editable=False)
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="channels")
    kind = models.CharField(max_length=10, choices=KIND_CHOICES)
    url = models.TextField(blank=True, help_text="Webhook or Slack incoming-webhook URL.")
    emails = models.JSONField(default=list, blank=True, help_text="Recipients of an email channel.")
    secret = models.CharField(max_length=200, blank=True, help_text="HMAC-SHA256 key of a webhook.")
    always = models.BooleanField(default=False, help_text="Notify at every run end, not only when a monitor failed.")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["created_at", "id"]

    def __str__(self):
        return f"{self.kind} {self.target}"

    @property
    def target(self):
        """Where it sends, safe to show: the URL without its path (which often holds a token), or
        the recipients."""
        if self.kind == self.EMAIL:
            return ", ".join(self.emails)
        parts = urlsplit(self.url)
        return f"{parts.scheme}://{parts.netloc}/…" if parts.path.strip("/") or parts.query else self.url

    @property
    def secret_hint(self):
        return f"…{self.secret[-4:]}" if len(self.secret) >= 12 else ("set" if self.secret else "")


class Alert(models.Model):
    """One notification decided for a crawl (a run end, a stall, a recovery, a test), claimed once by
    its unique ``key``: a second conductor tick or a failover never sends it twice."""

    RUN_ENDED = "run.ended"
    RUN_STALLED = "run.stalled"
    RUN_RECOVERED = "run.recovered"
    TEST = "test"
    EVENTS = (RUN_ENDED, RUN_STALLED, RUN_RECOVERED, TEST)

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="alerts")
    crawl = models.ForeignKey(Crawl, on_delete=models.CASCADE, null=True, blank=True, related_name="alerts")
    key = models.CharField(max_length=120, unique=True)
    event = models.CharField(max_length=20)
    payload = models.JSONField(help_text="The message body sent to every channel.")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]


class Delivery(models.Model):
    """One attempt to send an alert through a channel (the delivery log)."""

    DELIVERED = "delivered"
    RETRYING = "retrying"
    FAILED = "failed"

    public_id = models.CharField(max_length=20, unique=True, default=new_delivery_id, editable=False)
    alert = models.ForeignKey(Alert, on_delete=models.CASCADE, related_name="deliveries")
    channel = models.ForeignKey(Channel, on_delete=models.SET_NULL, null=True, blank=True, related_name="deliveries")
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="deliveries")
    channel_kind = models.CharField(max_length=10)
    target = models.CharField(max_length=300, help_text="Where it went, safe to show.")
    attempt = models.PositiveSmallIntegerField(default=1)
    outcome = models.CharField(max_length=10, help_text="delivered, retrying (another attempt follows) or failed.")
    detail = models.CharField(max_length=500, blank=True, help_text="HTTP status or why it failed.")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]
