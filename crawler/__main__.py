"""``python -m crawler run CODE --worker ID [--redis-url URL] [-s NAME=VALUE ...]``

Runs one Scrapy worker process for a crawl. Exit code 0 on a clean finish, stop or shutdown
(SIGTERM: unfinished leases go back to the queue), 1 when the worker failed (its state in the
``workers`` hash says why), 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import sys
import time
import traceback

from . import keys
from .connection import get_redis

logger = logging.getLogger(__name__)

CLEAN_REASONS = ("finished", "stopped", "shutdown")


def _record_failure(redis, code: str, worker: str, message: str) -> None:
    try:
        raw = redis.hget(keys.workers(code), worker)
        state = json.loads(raw) if raw else {}
        state.update(worker=worker, host=socket.gethostname(), pid=os.getpid(), state="failed",
                     message=message[-2000:], updated_at=time.time())
        pipe = redis.pipeline(transaction=False)
        pipe.hset(keys.workers(code), worker, json.dumps(state))
        pipe.delete(keys.heartbeat(code, worker))
        pipe.execute()
    except Exception:
        logger.exception("Cannot record the failure of worker %s", worker)


class _Outcome:
    """Keeps the spider_closed reason (a bound method: Scrapy holds receivers weakly)."""

    reason: str | None = None

    def spider_closed(self, spider, reason: str) -> None:
        self.reason = reason


def _deployed_spider(code, worker, redis_url, definition, overrides):
    """Settings, spider class and spider arguments of a deployed project's spider: the version the
    crawl froze at launch, fetched once (hash-checked) and imported from the local cache."""
    from scrapy.spiderloader import get_spider_loader

    from . import packages
    from .settings import crawl_settings

    frozen = definition["operator"]["package"]
    if os.environ.get("CRAWLSITE_DEPLOYED_CODE", "1").strip() == "0":
        raise ValueError(f"this worker does not run deployed code (CRAWLSITE_DEPLOYED_CODE=0): crawl {code} runs "
                         f"version {frozen.get('version')!r} of package {frozen.get('name')!r}; nothing was imported")
    binary = get_redis(redis_url or os.environ.get("REDIS_URL"), decode_responses=False)
    try:
        file = packages.fetch(binary, code, frozen["sha256"])
    finally:
        binary.close()
    archive = packages.describe(file.read_bytes())
    project = packages.load_settings(archive, file)
    settings = crawl_settings(definition, code, worker, redis_url, overrides, project=project)
    spider = definition["spider"]
    spidercls = get_spider_loader(settings).load(spider["spider"])
    logger.info("Crawl %s runs spider %s of %s version %s (sha256 %s)", code, spider["spider"], frozen["name"],
                frozen["version"], frozen["sha256"][:12])
    return settings, spidercls, dict(spider.get("args") or {})


def run(code: str, worker: str, redis_url: str | None = None, overrides: dict | None = None) -> int:
    from scrapy import signals
    from scrapy.crawler import CrawlerProcess
    from scrapy.utils.misc import load_object

    from .netpolicy import PolicyError
    from .settings import allowed_networks, crawl_settings, spider_path

    keys.validate_code(code)
    keys.validate_worker(worker)
    redis_url = redis_url or os.environ.get("REDIS_URL")
    redis = get_redis(redis_url)
    try:
        allowed_networks()
    except PolicyError as exc:  # a bad entry: one line, no crawling at all
        _record_failure(redis, code, worker, str(exc))
        print(f"Startup error: {exc}", file=sys.stderr)
        return 1
    try:
        raw = redis.get(keys.definition(code))
        if not raw:
            raise ValueError(f"crawl {code} has no definition in Redis")
        definition = json.loads(raw)
        deployed = (definition.get("operator") or {}).get("package")
        if deployed:
            settings, spidercls, kwargs = _deployed_spider(code, worker, redis_url, definition, overrides)
        else:
            settings = crawl_settings(definition, code, worker, redis_url, overrides)
            spidercls = load_object(spider_path(definition))
            kwargs = {"definition": definition} if hasattr(spidercls, "apply_definition") else {}
        process = CrawlerProcess(settings)
        crawler = process.create_crawler(spidercls)
        outcome = _Outcome()
        crawler.signals.connect(outcome.spider_closed, signal=signals.spider_closed)
        process.crawl(crawler, **kwargs)
        process.start()
    except Exception as exc:
        _record_failure(redis, code, worker, f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}")
        logger.exception("Worker %s of crawl %s failed", worker, code)
        return 1
    if outcome.reason in CLEAN_REASONS:
        return 0
    _record_failure(redis, code, worker, f"spider closed: {outcome.reason}")
    return 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m crawler")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="run one worker of a crawl")
    p.add_argument("code")
    p.add_argument("--worker", required=True)
    p.add_argument("--redis-url", default=None)
    p.add_argument("-s", "--set", action="append", default=[], metavar="NAME=VALUE",
                   help="override a Scrapy setting (tests, debugging)")
    args = parser.parse_args(argv)
    overrides = {}
    for item in args.set:
        name, sep, value = item.partition("=")
        if not sep:
            parser.error(f"-s expects NAME=VALUE, got {item!r}")
        overrides[name] = value
    try:
        keys.validate_code(args.code)
        keys.validate_worker(args.worker)
    except ValueError as exc:
        parser.error(str(exc))
    return run(args.code, args.worker, args.redis_url, overrides)


if __name__ == "__main__":
    sys.exit(main())
