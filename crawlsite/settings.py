"""Crawlsite settings: every value comes from the environment (see .env.example).

The defaults run offline on one machine: SQLite and Redis (the embedded one that `make run`
starts) under var/.
"""

import secrets
from datetime import timedelta
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured

from crawler.registry import SpiderRegistryError, parse_spiders
from crawlsite.env import (
    check_database_url,
    check_redis_url,
    email_settings,
    env_allowed_networks,
    env_bool,
    env_choice,
    env_float,
    env_int,
    env_list,
    env_str,
)
from crawlsite.private_files import create_private_file, make_private_dir, read_or_create_secret

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(env_str("CRAWLSITE_VAR_DIR", str(BASE_DIR / "var")))


def _secret_key():
    """SECRET_KEY from the environment; for a local install, one generated once under var/."""
    key = env_str("SECRET_KEY")
    if key:
        return key
    return read_or_create_secret(VAR_DIR / "secret-key", lambda: secrets.token_urlsafe(50))


def _redis_url():
    url = env_str("REDIS_URL")
    if url:
        return check_redis_url("REDIS_URL", url)
    # While `make run` is up, its embedded Redis is the default for manage.py commands too.
    local = VAR_DIR / "redis.url"
    if local.exists():
        return local.read_text().strip()
    return "redis://127.0.0.1:6379/0"


SECRET_KEY = _secret_key()
DEBUG = env_bool("DEBUG", False)
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]"])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "channels",
    "django_rq",
    "ninja",  # serves the API docs' Swagger UI from static files, not a CDN
    "axes",  # login throttling (after the auth apps: it hooks their signals)
    "dashboard",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.auth.middleware.LoginRequiredMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "dashboard.middleware.ContentSecurityPolicyMiddleware",
    # Last, as django-axes asks: it turns a locked-out login into its 429 answer.
    "axes.middleware.AxesMiddleware",
]

# django-axes sees every login (dashboard and admin) through its backend, which must come first.
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]

ROOT_URLCONF = "crawlsite.urls"
ASGI_APPLICATION = "crawlsite.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

_database_url = env_str("DATABASE_URL")
if _database_url:
    DATABASES = {"default": check_database_url("DATABASE_URL", _database_url)}
else:
    # Made here, private, before SQLite makes it with the process's umask: its -wal and -shm
    # files take the database file's mode.
    create_private_file(make_private_dir(VAR_DIR) / "db.sqlite3")
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": VAR_DIR / "db.sqlite3",
            # Web, conductor and commands write at once: WAL, a busy timeout and
            # IMMEDIATE transactions keep SQLite from answering "database is locked".
            "OPTIONS": {
                "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
                "transaction_mode": "IMMEDIATE",
                "timeout": 20,
            },
        }
    }
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "dashboard:overview"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = env_str("TIME_ZONE", "UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = env_str("STATIC_ROOT") or None  # only for `collectstatic` deployments
# Serve straight from the source folders: no collectstatic step for `make run`.
WHITENOISE_USE_FINDERS = True
WHITENOISE_AUTOREFRESH = DEBUG

# Security: strict by default, HTTPS-only cookies, HSTS and a redirect when served over HTTPS.
SECURE_HTTPS = env_bool("SECURE_HTTPS", False)
# A reverse proxy terminates TLS in front of us: only then is X-Forwarded-Proto believed. Without
# one, any client could send "X-Forwarded-Proto: https" and pass for a secure request.
BEHIND_PROXY = env_bool("BEHIND_PROXY", False)
SESSION_COOKIE_SECURE = SECURE_HTTPS
CSRF_COOKIE_SECURE = SECURE_HTTPS
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
CSRF_COOKIE_SAMESITE = "Lax"
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
SECURE_CROSS_ORIGIN_OPENER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
if BEHIND_PROXY:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
if SECURE_HTTPS:
    SECURE_SSL_REDIRECT = True
    # Load balancers probe /healthz over plain HTTP inside the network.
    SECURE_REDIRECT_EXEMPT = [r"^healthz$"]
    # One year by default (what browsers' preload lists expect); 0 turns HSTS off.
    SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 31_536_000, minimum=0)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", False)

# Login throttling (django-axes): LOGIN_FAILURE_LIMIT wrong passwords for one user name from one
# address lock that pair out for LOGIN_LOCKOUT_MINUTES; a successful login clears the count.
AXES_FAILURE_LIMIT = env_int("LOGIN_FAILURE_LIMIT", 5, minimum=1, maximum=1000)
AXES_COOLOFF_TIME = timedelta(minutes=env_float("LOGIN_LOCKOUT_MINUTES", 15, minimum=0.1, maximum=7 * 24 * 60))
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_LOCKOUT_CALLABLE = "dashboard.views.login_locked_out"
AXES_VERBOSE = False
DATA_UPLOAD_MAX_MEMORY_SIZE = env_int("MAX_REQUEST_BYTES", 2_621_440, minimum=1024)

# Redis: one URL feeds RQ, the channel layer and the crawler.
REDIS_URL = _redis_url()
CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        "CONFIG": {"hosts": [REDIS_URL], "prefix": "cs:asgi"},
    }
}
# Jobs are JSON, never pickle: anyone able to write to Redis must not run code on a worker.
RQ_SERIALIZER = "rq.serializers.JSONSerializer"
RQ_QUEUES = {
    "crawls": {"URL": REDIS_URL, "DEFAULT_TIMEOUT": 3600, "SERIALIZER": RQ_SERIALIZER},
    # Short jobs that must not wait behind crawls (`python manage.py rqworker tasks`).
    "tasks": {"URL": REDIS_URL, "DEFAULT_TIMEOUT": 600, "SERIALIZER": RQ_SERIALIZER},
    "default": {"URL": REDIS_URL, "DEFAULT_TIMEOUT": 600, "SERIALIZER": RQ_SERIALIZER},
}
RQ_SHOW_ADMIN_LINK = False

# The conductor's loop (seconds).
CONDUCTOR_TICK = env_float("CONDUCTOR_TICK", 0.25, minimum=0.05, maximum=10)
CONDUCTOR_LOCK_TTL = env_float("CONDUCTOR_LOCK_TTL", 5.0, minimum=1, maximum=300)
# A schedule's fire processed later than this after its due time counts as missed (catch-up policy).
SCHEDULE_MISSED_AFTER = env_float("SCHEDULE_MISSED_AFTER", 60.0, minimum=1, maximum=86400)
# A crawl with an empty queue and nothing in flight for this long is finished (seconds).
CRAWL_IDLE_GRACE = env_float("CRAWL_IDLE_GRACE", 1.5, minimum=0.1, maximum=600)
# Read by crawl workers (crawler.netpolicy); checked here too, so a bad entry stops startup
CRAWLSITE_ALLOWED_NETWORKS = env_allowed_networks()
# Bounds of the transient states (seconds): past them the crawl page and the API show which worker
# holds what, and offer a force stop. A running crawl with work queued and no progress for
# CRAWL_STALL_AFTER seconds is flagged as stalled, with the reason.
CRAWL_PAUSING_BOUND = env_float("CRAWL_PAUSING_BOUND", 60, minimum=1, maximum=86400)
CRAWL_STOPPING_BOUND = env_float("CRAWL_STOPPING_BOUND", 120, minimum=1, maximum=86400)
CRAWL_FINISHING_BOUND = env_float("CRAWL_FINISHING_BOUND", 120, minimum=1, maximum=86400)
CRAWL_STALL_AFTER = env_float("CRAWL_STALL_AFTER", 120, minimum=1, maximum=86400)
# RQ job timeout of a crawl worker without a duration limit, and the margin added to one.
CRAWL_JOB_TIMEOUT = env_int("CRAWL_JOB_TIMEOUT", 7 * 86400, minimum=60)
CRAWL_JOB_MARGIN = 600
# Custom spiders the operator installed, offered by name: "name=package.module.Class,...".
# Nothing is imported here: workers import the chosen class (docs/operations.md).
try:
    CRAWLSITE_SPIDERS = parse_spiders(env_str("CRAWLSITE_SPIDERS"))
except SpiderRegistryError as exc:
    raise ImproperlyConfigured(str(exc)) from None
# Largest item a worker stores, measured on its JSON (bytes); bigger ones are dropped and counted.
CRAWLSITE_MAX_ITEM_BYTES = env_int("CRAWLSITE_MAX_ITEM_BYTES", 1024 * 1024, minimum=1024, maximum=64 * 1024 * 1024)
# "Try it" previews (dashboard/preview.py): per user per minute, and the whole subprocess's time limit.
PREVIEWS_PER_MINUTE = env_int("PREVIEWS_PER_MINUTE", 10, minimum=1, maximum=10_000)
PREVIEW_TIMEOUT = env_float("PREVIEW_TIMEOUT", 40, minimum=5, maximum=600)
# "Send test" of a notification channel (dashboard/notify.py): per user per minute.
CHANNEL_TESTS_PER_MINUTE = env_int("CHANNEL_TESTS_PER_MINUTE", 6, minimum=1, maximum=10_000)
# Largest definition file accepted by "Import" on the project form (bytes).
DEFINITION_IMPORT_MAX_BYTES = env_int("DEFINITION_IMPORT_MAX_BYTES", 512 * 1024, minimum=1024, maximum=16 * 1024 * 1024)
# Largest deployed Scrapy project (egg or zip upload, bytes), and how long listing its spiders
# may take (a subprocess: docs/deploy.md).
CRAWLSITE_MAX_PACKAGE_BYTES = env_int("CRAWLSITE_MAX_PACKAGE_BYTES", 20 * 1024 * 1024, minimum=1024,
                                      maximum=512 * 1024 * 1024)
CRAWLSITE_INSPECT_TIMEOUT = env_float("CRAWLSITE_INSPECT_TIMEOUT", 60, minimum=1, maximum=3600)
# Items moved from Redis to the database per crawl per conductor tick, at most.
CONDUCTOR_ITEM_BATCH = env_int("CONDUCTOR_ITEM_BATCH", 2000, minimum=1, maximum=100_000)
# Seconds between two copies of an active crawl's history (series, log, counters) to the database.
HISTORY_INTERVAL = env_float("HISTORY_INTERVAL", 20.0, minimum=1, maximum=3600)

# Per-user caps, checked at launch, resume and scale-up (0 = no cap).
MAX_ACTIVE_CRAWLS_PER_USER = env_int("MAX_ACTIVE_CRAWLS_PER_USER", 10, minimum=0, maximum=100_000)
MAX_WORKERS_PER_USER = env_int("MAX_WORKERS_PER_USER", 32, minimum=0, maximum=100_000)
# Item search reads at most this many items per request, then offers to continue.
ITEM_SEARCH_ROWS = env_int("ITEM_SEARCH_ROWS", 5000, minimum=10, maximum=1_000_000)
# Excel exports: built by an RQ job on `tasks` into EXPORTS_DIR, kept XLSX_EXPORT_TTL seconds.
EXPORTS_DIR = Path(env_str("CRAWLSITE_EXPORTS_DIR", str(VAR_DIR / "exports")))
XLSX_EXPORT_TTL = env_int("XLSX_EXPORT_TTL", 86400, minimum=60)
XLSX_JOB_TIMEOUT = env_int("XLSX_JOB_TIMEOUT", 1800, minimum=10)

# Notifications (docs/alerts.md): mail from EMAIL_URL; webhook deliveries retried after these
# delays (seconds), each attempt bounded in time and in the size of the answer read.
globals().update(email_settings("EMAIL_URL"))
# The dashboard's address as people reach it: links in notifications.
PUBLIC_URL = env_str("PUBLIC_URL", "http://localhost:8000")
try:
    ALERT_RETRY_INTERVALS = [int(x) for x in env_list("ALERT_RETRY_INTERVALS", ["10", "60", "300"])]
except ValueError:
    raise ImproperlyConfigured("ALERT_RETRY_INTERVALS must be whole seconds, comma-separated (e.g. 10,60,300)") from None
ALERT_SEND_TIMEOUT = env_float("ALERT_SEND_TIMEOUT", 10, minimum=0.5, maximum=120)
ALERT_RESPONSE_MAX_BYTES = 64 * 1024
ALERT_JOB_TIMEOUT = 60

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env_choice("LOG_LEVEL", "INFO", ["DEBUG", "INFO", "WARNING", "ERROR"])},
    "loggers": {"django.db.backends": {"level": "WARNING"}},
}
