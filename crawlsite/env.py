"""Typed readers for environment variables.

Settings and the launcher read every variable through these helpers, so a bad value stops
startup with one line that names the variable and says what was expected.
"""

import os
from urllib.parse import urlsplit

from django.core.exceptions import ImproperlyConfigured

TRUE = {"1", "true", "yes", "on"}
FALSE = {"0", "false", "no", "off", ""}


def _raw(name):
    value = os.environ.get(name)
    return None if value is None else value.strip()


def env_str(name, default=""):
    value = _raw(name)
    return default if value is None or value == "" else value


def env_int(name, default, minimum=None, maximum=None):
    value = _raw(name)
    if value is None or value == "":
        return default
    try:
        number = int(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name}={value!r} is not a whole number") from None
    if minimum is not None and number < minimum:
        raise ImproperlyConfigured(f"{name}={number} is below the minimum of {minimum}")
    if maximum is not None and number > maximum:
        raise ImproperlyConfigured(f"{name}={number} is above the maximum of {maximum}")
    return number


def env_float(name, default, minimum=None, maximum=None):
    value = _raw(name)
    if value is None or value == "":
        return default
    try:
        number = float(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name}={value!r} is not a number") from None
    if number != number or (minimum is not None and number < minimum):
        raise ImproperlyConfigured(f"{name}={value!r} is below the minimum of {minimum}")
    if maximum is not None and number > maximum:
        raise ImproperlyConfigured(f"{name}={value!r} is above the maximum of {maximum}")
    return number


def env_bool(name, default):
    value = _raw(name)
    if value is None:
        return default
    lowered = value.lower()
    if lowered in TRUE:
        return True
    if lowered in FALSE:
        return False
    raise ImproperlyConfigured(f"{name}={value!r} is not a boolean (use 1/0, true/false, yes/no, on/off)")


def env_choice(name, default, choices):
    value = env_str(name, default)
    if value.upper() not in choices:
        raise ImproperlyConfigured(f"{name}={value!r} must be one of {', '.join(choices)}")
    return value.upper()


def env_list(name, default=()):
    value = _raw(name)
    if value is None or value == "":
        return list(default)
    return [part.strip() for part in value.split(",") if part.strip()]


def check_redis_url(name, value):
    """Return ``value`` if it is a usable Redis URL, else raise naming ``name``."""
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError as exc:
        raise ImproperlyConfigured(f"{name}={value!r} is not a valid URL ({exc})") from None
    if parts.scheme not in ("redis", "rediss", "unix"):
        raise ImproperlyConfigured(
            f"{name}={value!r} must start with redis://, rediss:// or unix://"
        )
    if parts.scheme == "unix" and not parts.path:
        raise ImproperlyConfigured(f"{name}={value!r} names no socket path")
    if parts.scheme != "unix" and not parts.hostname:
        raise ImproperlyConfigured(f"{name}={value!r} names no host")
    if port == 0:
        raise ImproperlyConfigured(f"{name}={value!r} has port 0")
    db = parts.path.lstrip("/")
    if parts.scheme != "unix" and db and not db.isdigit():
        raise ImproperlyConfigured(f"{name}={value!r}: the database number {db!r} is not a number")
    return value


def check_database_url(name, value):
    """Parse a DATABASE_URL into Django's DATABASES entry, or raise naming ``name``."""
    import dj_database_url

    scheme = value.split("://", 1)[0] if "://" in value else ""
    if scheme not in ("sqlite", "postgres", "postgresql", "pgsql"):
        raise ImproperlyConfigured(
            f"{name}={value!r} must start with sqlite:// or postgres:// (PostgreSQL)"
        )
    try:
        config = dj_database_url.parse(value, conn_max_age=60)
    except ValueError as exc:
        raise ImproperlyConfigured(f"{name}={value!r} is not a valid database URL ({exc})") from None
    if config["ENGINE"].endswith("postgresql") and not config.get("NAME"):
        raise ImproperlyConfigured(f"{name}={value!r} names no database")
    return config


def env_allowed_networks():
    """``CRAWLSITE_ALLOWED_NETWORKS``, the network policy's exceptions (``ADDRESS[/PREFIX][:PORT]``,
    comma-separated), checked entry by entry (crawler.netpolicy)."""
    from crawler.netpolicy import PolicyError, parse_allowed

    value = env_str("CRAWLSITE_ALLOWED_NETWORKS")
    try:
        parse_allowed(value)
    except PolicyError as exc:
        raise ImproperlyConfigured(str(exc)) from None
    return value


EMAIL_SCHEMES = {
    "smtp": (False, False),  # (STARTTLS, implicit TLS)
    "submission": (True, False),
    "smtp+tls": (True, False),
    "smtps": (False, True),
    "smtp+ssl": (False, True),
}


def email_settings(name):
    """Django's mail settings from an ``EMAIL_URL``-style variable, or raise naming ``name``.

    ``smtp://USER:PASSWORD@HOST:PORT`` (``submission://`` or ``smtp+tls://`` for STARTTLS,
    ``smtps://`` or ``smtp+ssl://`` for implicit TLS), ``console://`` (printed to the log) or
    ``locmem://`` (kept in memory, for tests). Empty: mail goes to the console. User and password
    are percent-decoded; ``?from=ADDRESS`` sets the sender.
    """
    from urllib.parse import parse_qs, unquote

    value = env_str(name, "console://")
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError as exc:
        raise ImproperlyConfigured(f"{name} is not a valid URL ({exc})") from None
    query = parse_qs(parts.query)
    sender = (query.get("from") or ["crawlsite@localhost"])[0]
    if parts.scheme == "console":
        return {"EMAIL_BACKEND": "django.core.mail.backends.console.EmailBackend", "DEFAULT_FROM_EMAIL": sender}
    if parts.scheme == "locmem":
        return {"EMAIL_BACKEND": "django.core.mail.backends.locmem.EmailBackend", "DEFAULT_FROM_EMAIL": sender}
    if parts.scheme not in EMAIL_SCHEMES or not parts.hostname:
        raise ImproperlyConfigured(
            f"{name} must look like smtp://USER:PASSWORD@HOST:PORT (or submission://, smtps://, "
            "console://, locmem://)")
    starttls, implicit = EMAIL_SCHEMES[parts.scheme]
    return {
        "EMAIL_BACKEND": "django.core.mail.backends.smtp.EmailBackend",
        "EMAIL_HOST": parts.hostname,
        "EMAIL_PORT": port or (465 if implicit else 587 if starttls else 25),
        "EMAIL_HOST_USER": unquote(parts.username or ""),
        "EMAIL_HOST_PASSWORD": unquote(parts.password or ""),
        "EMAIL_USE_TLS": starttls,
        "EMAIL_USE_SSL": implicit,
        "EMAIL_TIMEOUT": 10,
        "DEFAULT_FROM_EMAIL": sender,
    }
