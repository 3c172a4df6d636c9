"""Custom spiders an operator installed, chosen by name (``CRAWLSITE_SPIDERS``).

A definition never holds an importable path: it names a spider from this mapping, and nothing
a user types is imported by the web process. The operator writes the mapping once::

    CRAWLSITE_SPIDERS=shop=myproject.spiders.ShopSpider,news=myproject.spiders.NewsSpider

The dashboard reads it at startup (``crawlsite/settings.py``), offers the names, and at launch
freezes the chosen name's dotted path in the crawl's definition (``operator.spider_class``).
A worker imports only that path, and only if it is an entry of its own ``CRAWLSITE_SPIDERS``
when that variable is set on its machine (:func:`check_worker_spider`).
"""

from __future__ import annotations

import re

__all__ = ["ENV", "SpiderRegistryError", "check_worker_spider", "parse_spiders"]

ENV = "CRAWLSITE_SPIDERS"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
PATH_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+$")


class SpiderRegistryError(ValueError):
    """The operator's spider mapping is malformed; the message names the entry."""


def parse_spiders(text: str | None, source: str = ENV) -> dict[str, str]:
    """Parse ``name=package.module.Class`` entries (comma-separated) into ``{name: path}``.

    Nothing is imported. A malformed entry raises :class:`SpiderRegistryError` naming it.
    """
    spiders: dict[str, str] = {}
    for number, raw in enumerate((text or "").split(","), start=1):
        entry = raw.strip()
        if not entry:
            continue
        name, sep, path = (part.strip() for part in entry.partition("="))
        where = f"{source}: entry {number} ({entry!r})"
        if not sep:
            raise SpiderRegistryError(f"{where} must be written name=package.module.SpiderClass")
        if not NAME_RE.match(name):
            raise SpiderRegistryError(
                f"{where}: the name {name!r} must be 1-64 letters, digits, '_' or '-', starting with a letter or digit")
        if not PATH_RE.match(path):
            raise SpiderRegistryError(
                f"{where}: {path!r} is not a dotted path such as myproject.spiders.ShopSpider")
        if name in spiders:
            raise SpiderRegistryError(f"{where}: the name {name!r} is given twice")
        spiders[name] = path
    return spiders


def check_worker_spider(name: str, path: str, local: dict[str, str] | None) -> str:
    """The dotted path a worker may import for spider ``name``, or raise ValueError.

    ``path`` comes from the crawl's frozen definition (written by the dashboard from its
    mapping). ``local`` is this machine's own ``CRAWLSITE_SPIDERS`` (None when unset): when set,
    the worker imports only what it lists for that name.
    """
    if not isinstance(path, str) or not PATH_RE.match(path):
        raise ValueError(f"spider {name!r}: {path!r} is not a dotted path; nothing was imported")
    if local is not None and local.get(name) != path:
        raise ValueError(
            f"spider {name!r} ({path}) is not installed on this worker ({ENV} here lists: "
            f"{', '.join(f'{k}={v}' for k, v in sorted(local.items())) or 'nothing'}); nothing was imported")
    return path
