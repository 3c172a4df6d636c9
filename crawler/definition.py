"""The one validator of a crawl definition (used by the dashboard's form, admin and API).

    validate(data, spiders=NAMES) -> normalized definition (a new dict), or raises DefinitionError(errors)

``errors`` maps a dotted field path (``start_urls.2``, ``item.fields.1.selector``,
``settings.FOO``) to a list of messages a user can read. Missing optional sections get defaults.

Nothing here imports or runs what a user wrote: ``spider`` is checked against the names of the
spiders the operator installed (``spiders``, see :mod:`crawler.registry`), and regexes are
compiled with RE2 (:mod:`crawler.patterns`), which runs in linear time.
"""

from __future__ import annotations

import copy
import re
import unicodedata
from typing import Any, Iterable
from urllib.parse import urlsplit

from .patterns import PatternError, compile_pattern
from .validation import check_unique_key, check_validation

__all__ = ["ALLOWED_SETTINGS", "DefinitionError", "default_definition", "validate", "validate_url", "MAX_START_URLS"]

MAX_NAME = 200
MAX_START_URLS = 1000
MAX_FIELDS = 100
MAX_WORKERS = 64
MAX_REGEXES = 100
LIMIT_MAXIMA = {
    "max_depth": 1000,
    "max_pages": 1_000_000_000,
    "max_items": 1_000_000_000,
    "max_duration": 30 * 24 * 3600,  # seconds
}
_FIELD_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
_HOST_RE = re.compile(r"^(?=.{1,253}$)([A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9])?)*\.?$")

# name -> {type, min, max, default, help}; the only Scrapy settings a definition may set.
ALLOWED_SETTINGS: dict[str, dict[str, Any]] = {
    "CONCURRENT_REQUESTS": {"type": int, "min": 1, "max": 256, "default": 16,
                            "help": "Maximum concurrent requests of each worker (all domains together)."},
    "CONCURRENT_REQUESTS_PER_DOMAIN": {"type": int, "min": 1, "max": 256, "default": 8,
                                       "help": "Maximum requests in flight to one domain across the whole crawl (all workers together)."},
    "DOWNLOAD_DELAY": {"type": float, "min": 0.0, "max": 60.0, "default": 0.0,
                       "help": "Minimum seconds between two requests to the same domain across the whole crawl (all workers together)."},
    "RANDOMIZE_DOWNLOAD_DELAY": {"type": bool, "default": True,
                                 "help": "Wait 0.5x to 1.5x DOWNLOAD_DELAY."},
    "AUTOTHROTTLE_ENABLED": {"type": bool, "default": False, "help": "Adapt each domain's delay to its latency, measured by all workers and shared by the crawl."},
    "AUTOTHROTTLE_START_DELAY": {"type": float, "min": 0.0, "max": 60.0, "default": 5.0,
                                 "help": "Initial AutoThrottle delay (seconds)."},
    "AUTOTHROTTLE_MAX_DELAY": {"type": float, "min": 0.0, "max": 600.0, "default": 60.0,
                               "help": "Maximum AutoThrottle delay (seconds)."},
    "AUTOTHROTTLE_TARGET_CONCURRENCY": {"type": float, "min": 0.1, "max": 256.0, "default": 1.0,
                                        "help": "Average parallel requests AutoThrottle aims at."},
    "ROBOTSTXT_OBEY": {"type": bool, "default": True, "help": "Respect robots.txt."},
    "USER_AGENT": {"type": str, "max_length": 500, "default": "", "help": "User-Agent header (empty: Scrapy's)."},
    "RETRY_ENABLED": {"type": bool, "default": True, "help": "Retry failed requests."},
    "RETRY_TIMES": {"type": int, "min": 0, "max": 20, "default": 2, "help": "Retries per request."},
    "DOWNLOAD_TIMEOUT": {"type": float, "min": 1.0, "max": 3600.0, "default": 180.0,
                         "help": "Seconds before a download times out."},
    "DOWNLOAD_MAXSIZE": {"type": int, "min": 1024, "max": 512 * 1024 ** 2, "default": 32 * 1024 ** 2,
                         "help": "Largest response body in bytes (1 KiB to 512 MiB; there is no 'no limit'). "
                                 "A bigger page is not stored and counts as an error."},
    "REDIRECT_ENABLED": {"type": bool, "default": True, "help": "Follow HTTP redirects."},
    "COOKIES_ENABLED": {"type": bool, "default": True, "help": "Keep cookies between requests."},
}

TOP_LEVEL = ("name", "start_urls", "allowed_domains", "follow", "limits", "item", "spider", "settings", "workers",
             "validation", "unique_key")


class DefinitionError(ValueError):
    """An invalid crawl definition; ``errors`` maps dotted field paths to messages."""

    def __init__(self, errors: dict[str, list[str]]):
        self.errors = errors
        super().__init__("; ".join(f"{k}: {' '.join(v)}" for k, v in sorted(errors.items())))


def default_definition() -> dict[str, Any]:
    """A definition with every section at its default (start URLs and fields still to fill)."""
    return {
        "name": "",
        "start_urls": [],
        "allowed_domains": [],
        "follow": {"allow": [], "deny": []},
        "limits": {"max_depth": 0, "max_pages": 0, "max_items": 0, "max_duration": 0},
        "item": {"url_pattern": "", "selector": "", "fields": []},
        "spider": "",
        "settings": {},
        "workers": 1,
        "validation": {"required": [], "rules": [], "schema": None},
        "unique_key": [],
    }


class _Errors(dict):
    def add(self, path: str, message: str) -> None:
        self.setdefault(path, []).append(message)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def control_characters(value: str) -> list[str]:
    """The control characters (C0, DEL, C1: CR, LF, NUL, ESC...) in ``value``, as ``U+000D``."""
    found = []
    for c in value:
        if unicodedata.category(c) == "Cc":
            label = f"U+{ord(c):04X}"
            if label not in found:
                found.append(label)
    return found


def _check_no_controls(value: str, path: str, errors: _Errors) -> bool:
    found = control_characters(value)
    if found:
        errors.add(path, f"Control characters are not allowed (found {', '.join(found[:5])}).")
        return False
    return True


def _check_regex(value: Any, path: str, errors: _Errors) -> str | None:
    """A user regex: it must compile with RE2, the engine the workers run it on."""
    try:
        compile_pattern(value)
    except PatternError as exc:
        errors.add(path, str(exc))
        return None
    return value


def is_xpath(selector: str) -> bool:
    return selector.startswith(("/", "("))


def _check_selector(value: Any, path: str, errors: _Errors, *, allow_pseudo: bool = True) -> str | None:
    """Compile a CSS (``::text``/``::attr(x)`` allowed) or XPath (starts with ``/`` or ``(``) selector."""
    from parsel import Selector  # imported lazily: parsel pulls in lxml

    if not isinstance(value, str):
        errors.add(path, "Must be a string (a CSS or XPath selector).")
        return None
    value = value.strip()
    if not value:
        errors.add(path, "This field is required.")
        return None
    probe = Selector(text="<html><body></body></html>")
    try:
        if is_xpath(value):
            probe.xpath(value)
        else:
            if not allow_pseudo and "::" in value:
                raise ValueError("pseudo-elements (::text, ::attr) are not allowed here")
            probe.css(value)
    except Exception as exc:  # cssselect.SelectorError, lxml XPathError, ValueError...
        kind = "XPath" if is_xpath(value) else "CSS"
        errors.add(path, f"Invalid {kind} selector: {exc}.")
        return None
    return value


def _check_url(value: Any, path: str, errors: _Errors) -> str | None:
    if not isinstance(value, str) or not value.strip():
        errors.add(path, "Must be an absolute http(s) URL.")
        return None
    value = value.strip()
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        errors.add(path, f"Invalid URL: {exc}.")
        return None
    if parts.scheme.lower() not in ("http", "https"):
        errors.add(path, "Must be an absolute http(s) URL (e.g. https://example.com/).")
        return None
    if not parts.hostname:
        errors.add(path, "The URL has no host.")
        return None
    if any(c.isspace() for c in value):
        errors.add(path, "A URL cannot contain spaces.")
        return None
    return value


def validate_url(value: Any, path: str = "url") -> str:
    """One absolute http(s) URL, checked as a start URL is; DefinitionError ``{path: [...]}`` if not."""
    errors = _Errors()
    url = _check_url(value, path, errors)
    if errors or url is None:
        raise DefinitionError(dict(errors))
    return url


def host_allowed(host: str, domains: list[str]) -> bool:
    host = host.lower().rstrip(".")
    return any(host == d or host.endswith("." + d) for d in domains)


_DOTTED_PATH_RE = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)+$")


def _check_spider(value: str, path: str, errors: _Errors, spiders: list[str]) -> str:
    """A custom spider is a *name* from the operator's list; nothing is imported here."""
    if value in spiders:
        return value
    available = ", ".join(spiders) if spiders else "none: the operator has installed no custom spiders"
    if _DOTTED_PATH_RE.match(value):
        errors.add(path, f"Custom spiders are chosen by name now, not by dotted path ({value!r}). "
                         f"Available: {available}.")
    else:
        errors.add(path, f"Unknown spider {value[:100]!r}. Available: {available}.")
    return value


_PACKAGE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+:-]{0,99}$")
_SPIDER_NAME_RE = re.compile(r"^[\w.:-]{1,128}$")
_ARG_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
RESERVED_ARGS = ("name", "crawler", "settings", "custom_settings", "start_urls", "definition")
MAX_ARGS = 50
MAX_ARG_LENGTH = 10_000
DEPLOYED_FIELDS = ("package", "spider", "version", "args")


def check_spider_args(args: Any, path: str, errors: _Errors) -> dict[str, str]:
    """Spider arguments (``-a name=value``): identifiers mapped to strings, bounded in number and size."""
    if args is None:
        return {}
    if not isinstance(args, dict):
        errors.add(path, "Must be an object of argument name -> string value.")
        return {}
    if len(args) > MAX_ARGS:
        errors.add(path, f"At most {MAX_ARGS} arguments.")
        return {}
    out = {}
    for name, value in args.items():
        where = f"{path}.{name}"[:200]
        if not isinstance(name, str) or not _ARG_NAME_RE.match(name):
            errors.add(where, "An argument name is letters, digits and _, not starting with a digit (max 64).")
        elif name in RESERVED_ARGS:
            errors.add(where, f"{name!r} is reserved (it would replace the spider's own attribute).")
        elif not isinstance(value, str):
            errors.add(where, "Must be a string (Scrapy passes spider arguments as strings).")
        elif len(value) > MAX_ARG_LENGTH:
            errors.add(where, f"At most {MAX_ARG_LENGTH} characters.")
        elif "\x00" in value:
            errors.add(where, "NUL characters are not allowed.")
        else:
            out[name] = value
    return out


def _check_deployed(value: dict, errors: _Errors, packages: dict | None) -> dict:
    """A spider of a deployed package: ``{package, spider, version ("" = latest), args}``.
    With ``packages`` (``{package: {version: [spiders]}}``, versions oldest first) the names are
    checked against what the owner deployed; nothing is imported."""
    out = {"package": "", "spider": "", "version": "", "args": {}}
    for extra in sorted(set(value) - set(DEPLOYED_FIELDS)):
        errors.add(f"spider.{extra}"[:200], f"Unknown field (expected one of: {', '.join(DEPLOYED_FIELDS)}).")
    for key, pattern, what in (("package", _PACKAGE_RE, "a package name (letters, digits, _ . -; max 64)"),
                               ("spider", _SPIDER_NAME_RE, "a spider name (letters, digits, _ . : -; max 128)")):
        raw = value.get(key)
        if not isinstance(raw, str) or not pattern.match(raw.strip()):
            errors.add(f"spider.{key}", f"Must be {what}.")
        else:
            out[key] = raw.strip()
    version = value.get("version") or ""
    if not isinstance(version, str) or (version.strip() and not _VERSION_RE.match(version.strip())):
        errors.add("spider.version", "Must be a version name (letters, digits, _ . + : -; max 100), or empty for the latest.")
    else:
        out["version"] = version.strip()
    out["args"] = check_spider_args(value.get("args"), "spider.args", errors)
    if packages is None or any(k in errors for k in ("spider.package", "spider.spider", "spider.version")):
        return out
    versions = packages.get(out["package"])
    if versions is None:
        errors.add("spider.package", f"You have deployed no package {out['package']!r}. "
                                     f"Yours: {', '.join(sorted(packages)) or 'none yet'}.")
        return out
    if out["version"] and out["version"] not in versions:
        errors.add("spider.version", f"Package {out['package']!r} has no version {out['version']!r}.")
        return out
    spiders = versions[out["version"]] if out["version"] else (list(versions.values())[-1] if versions else [])
    if out["spider"] not in spiders:
        errors.add("spider.spider", f"No spider {out['spider']!r} in {out['package']!r} "
                                    f"{out['version'] or '(latest version)'}. It has: {', '.join(spiders) or 'none'}.")
    return out


def _check_setting(name: str, value: Any, path: str, errors: _Errors) -> Any:
    spec = ALLOWED_SETTINGS[name]
    kind = spec["type"]
    if kind is bool:
        if not isinstance(value, bool):
            errors.add(path, "Must be true or false.")
            return None
        return value
    if kind is str:
        if not isinstance(value, str):
            errors.add(path, "Must be a string.")
            return None
        if len(value) > spec["max_length"]:
            errors.add(path, f"At most {spec['max_length']} characters.")
            return None
        if not _check_no_controls(value, path, errors):
            return None
        return value
    if kind is int:
        if not _is_int(value):
            errors.add(path, "Must be an integer.")
            return None
    elif kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
            errors.add(path, "Must be a number.")
            return None
        value = float(value)
    if value == 0 and spec["min"] > 0 and name == "DOWNLOAD_MAXSIZE":
        errors.add(path, f"0 (no limit) is not allowed: give a size in bytes between {spec['min']} and {spec['max']}.")
        return None
    if not spec["min"] <= value <= spec["max"]:
        errors.add(path, f"Must be between {spec['min']} and {spec['max']}.")
        return None
    return value


def _string_list(data: dict, key: str, path: str, errors: _Errors, maximum: int) -> list | None:
    value = data.get(key, [])
    if value is None:
        value = []
    if not isinstance(value, list):
        errors.add(path, "Must be a list.")
        return None
    if len(value) > maximum:
        errors.add(path, f"At most {maximum} entries.")
        return None
    return value


def _section(data: dict, key: str, errors: _Errors, allowed: tuple[str, ...]) -> dict | None:
    value = data.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        errors.add(key, "Must be an object.")
        return None
    for extra in sorted(set(value) - set(allowed)):
        errors.add(f"{key}.{extra}", f"Unknown field (expected one of: {', '.join(allowed)}).")
    return value


def validate(data: dict, spiders: Iterable[str] = (), packages: dict | None = None) -> dict:
    """Validate and normalize a crawl definition; raise :class:`DefinitionError` if invalid.

    ``spiders`` are the names of the custom spiders the operator installed (``CRAWLSITE_SPIDERS``);
    ``spider`` must be one of them, or an object naming a spider of a deployed package
    (``packages``, see :func:`_check_deployed`), or empty: the built-in spider driven by ``item``.
    A deployed spider starts from its own ``start()``: start URLs are optional.
    """
    errors = _Errors()
    spiders = sorted(spiders)
    if not isinstance(data, dict):
        raise DefinitionError({"__all__": ["The definition must be a JSON object."]})
    out = default_definition()
    for extra in sorted(set(data) - set(TOP_LEVEL)):
        errors.add(extra, f"Unknown field (expected one of: {', '.join(TOP_LEVEL)}).")

    # name
    name = data.get("name", "")
    if not isinstance(name, str):
        errors.add("name", "Must be a string.")
    elif not name.strip():
        errors.add("name", "This field is required.")
    elif len(name.strip()) > MAX_NAME:
        errors.add("name", f"At most {MAX_NAME} characters.")
    elif _check_no_controls(name, "name", errors):
        out["name"] = name.strip()

    deployed = isinstance(data.get("spider"), dict)

    # start_urls
    urls = data.get("start_urls")
    if (urls is None or urls == []) and deployed:
        urls = []
    elif urls is None or urls == []:
        errors.add("start_urls", "At least one start URL is required.")
    elif isinstance(urls, str):
        errors.add("start_urls", "Must be a list of URLs.")
    elif not isinstance(urls, list):
        errors.add("start_urls", "Must be a list of URLs.")
    elif len(urls) > MAX_START_URLS:
        errors.add("start_urls", f"At most {MAX_START_URLS} start URLs.")
    else:
        good = [(i, _check_url(u, f"start_urls.{i}", errors)) for i, u in enumerate(urls)]
        out["start_urls"] = [u for _, u in good if u]

    # allowed_domains
    domains = _string_list(data, "allowed_domains", "allowed_domains", errors, 1000)
    if domains is not None:
        norm = []
        for i, d in enumerate(domains):
            if not isinstance(d, str) or not _HOST_RE.match(d.strip()) or "/" in d or ":" in d:
                errors.add(f"allowed_domains.{i}", "Must be a host name such as example.com (no scheme, port or path).")
                continue
            d = d.strip().lower().rstrip(".")
            if d not in norm:
                norm.append(d)
        if not domains:
            for u in out["start_urls"]:
                host = urlsplit(u).hostname.lower().rstrip(".")
                if host not in norm:
                    norm.append(host)
        else:
            for i, u in enumerate(urls if isinstance(urls, list) else []):
                if not isinstance(u, str) or f"start_urls.{i}" in errors or not norm:
                    continue
                host = urlsplit(u.strip()).hostname or ""
                if not host_allowed(host, norm):
                    errors.add(f"start_urls.{i}", f"Host {host!r} is outside allowed_domains.")
        out["allowed_domains"] = norm

    # follow
    follow = _section(data, "follow", errors, ("allow", "deny"))
    if follow is not None:
        for key in ("allow", "deny"):
            patterns = _string_list(follow, key, f"follow.{key}", errors, MAX_REGEXES)
            if patterns is not None:
                checked = [_check_regex(p, f"follow.{key}.{i}", errors) for i, p in enumerate(patterns)]
                out["follow"][key] = [p for p in checked if p is not None and p != ""]

    # limits
    limits = _section(data, "limits", errors, tuple(LIMIT_MAXIMA))
    if limits is not None:
        for key, maximum in LIMIT_MAXIMA.items():
            value = limits.get(key, 0)
            if value is None:
                value = 0
            if not _is_int(value):
                errors.add(f"limits.{key}", "Must be a whole number (0 = no limit).")
            elif not 0 <= value <= maximum:
                errors.add(f"limits.{key}", f"Must be between 0 (no limit) and {maximum}.")
            else:
                out["limits"][key] = value

    # spider
    spider = data.get("spider", "") or ""
    if deployed:
        out["spider"] = _check_deployed(spider, errors, packages)
    elif not isinstance(spider, str):
        errors.add("spider", "Must be the name of an installed spider, or empty.")
        spider = ""
    spider = spider if deployed else spider.strip()
    if spider and not deployed:
        out["spider"] = _check_spider(spider, "spider", errors, spiders)

    # item
    item = _section(data, "item", errors, ("url_pattern", "selector", "fields"))
    if item is not None:
        pattern = item.get("url_pattern", "") or ""
        if _check_regex(pattern, "item.url_pattern", errors) is not None:
            out["item"]["url_pattern"] = pattern
        selector = item.get("selector", "") or ""
        if not isinstance(selector, str):
            errors.add("item.selector", "Must be a string.")
        elif selector.strip():
            checked = _check_selector(selector, "item.selector", errors, allow_pseudo=False)
            if checked:
                out["item"]["selector"] = checked
        fields = item.get("fields", []) or []
        if not isinstance(fields, list):
            errors.add("item.fields", "Must be a list.")
        elif len(fields) > MAX_FIELDS:
            errors.add("item.fields", f"At most {MAX_FIELDS} fields.")
        else:
            names: set[str] = set()
            norm_fields = []
            for i, f in enumerate(fields):
                path = f"item.fields.{i}"
                if not isinstance(f, dict):
                    errors.add(path, "Must be an object {name, selector, many}.")
                    continue
                for extra in sorted(set(f) - {"name", "selector", "many"}):
                    errors.add(f"{path}.{extra}", "Unknown field (expected name, selector, many).")
                fname = f.get("name", "")
                fname = fname.strip() if isinstance(fname, str) else fname
                if not isinstance(fname, str) or not fname:
                    errors.add(f"{path}.name", "This field is required.")
                elif not _FIELD_NAME_RE.match(fname):
                    errors.add(f"{path}.name", "Use letters, digits and _ only, not starting with a digit (max 64).")
                elif fname == "url":
                    errors.add(f"{path}.name", "'url' is reserved: every item carries its page URL.")
                elif fname in names:
                    errors.add(f"{path}.name", f"Duplicate field name {fname!r}.")
                else:
                    names.add(fname)
                sel = _check_selector(f.get("selector", ""), f"{path}.selector", errors)
                many = f.get("many", False)
                if many is None:
                    many = False
                if not isinstance(many, bool):
                    errors.add(f"{path}.many", "Must be true or false.")
                norm_fields.append({"name": fname, "selector": sel, "many": bool(many)})
            out["item"]["fields"] = norm_fields
            if not spider and not fields and "item.fields" not in errors:
                errors.add("item.fields", "Add at least one field (or name a custom spider).")

    # validation and unique key: rules may name only extracted fields (any field for a custom spider)
    extracted = None if spider else [f["name"] for f in out["item"]["fields"] if isinstance(f["name"], str)]
    out["validation"] = check_validation(data.get("validation"), extracted, errors.add)
    out["unique_key"] = check_unique_key(data.get("unique_key"), extracted, errors.add)

    # settings
    settings = data.get("settings", {})
    if settings is None:
        settings = {}
    if not isinstance(settings, dict):
        errors.add("settings", "Must be an object of setting name -> value.")
    else:
        for key, value in settings.items():
            path = f"settings.{key}"
            if key not in ALLOWED_SETTINGS:
                errors.add(path, f"Unknown or not allowed setting {key!r}.")
                continue
            checked = _check_setting(key, value, path, errors)
            if checked is not None:
                out["settings"][key] = checked

    # workers
    workers = data.get("workers", 1)
    if workers is None:
        workers = 1
    if not _is_int(workers):
        errors.add("workers", "Must be a whole number.")
    elif not 1 <= workers <= MAX_WORKERS:
        errors.add("workers", f"Must be between 1 and {MAX_WORKERS}.")
    else:
        out["workers"] = workers

    if errors:
        raise DefinitionError(dict(errors))
    return copy.deepcopy(out)
