"""A user's own Scrapy project, written by the tests into a folder, as `scrapy startproject` lays it
out: its own spider (``async def start()``, spider arguments), its own item pipeline that stamps
items with a setting of the project, and its own settings. Deployed with the real scrapyd-deploy."""

import os
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

SCRAPY_CFG = """\
[settings]
default = shopbot.settings

[deploy]
url = {url}
project = {project}
username = {username}
password = {password}
"""

SETTINGS = """\
BOT_NAME = "shopbot"
SPIDER_MODULES = ["shopbot.spiders"]
NEWSPIDER_MODULE = "shopbot.spiders"
ROBOTSTXT_OBEY = True
ITEM_PIPELINES = {{"shopbot.pipelines.StampPipeline": 300}}
SHOPBOT_STAMP = {stamp!r}
"""

PIPELINES = """\
class StampPipeline:
    \"\"\"The project's own pipeline: every item carries the stamp of the version that scraped it.\"\"\"

    def __init__(self, stamp):
        self.stamp = stamp

    @classmethod
    def from_crawler(cls, crawler):
        return cls(crawler.settings.get("SHOPBOT_STAMP"))

    def process_item(self, item):
        item["stamp"] = self.stamp
        return item
"""

SPIDER = """\
import scrapy


class ShopSpider(scrapy.Spider):
    name = "shop"

    def __init__(self, site=None, label="", start_delay="0", *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.site = site.rstrip("/")
        self.label = label
        self.start_delay = float(start_delay)

    async def start(self):
        if self.start_delay:  # e.g. fetching a token before the first request
            from scrapy.utils.defer import maybe_deferred_to_future
            from twisted.internet import reactor, task

            await maybe_deferred_to_future(task.deferLater(reactor, self.start_delay, lambda: None))
        yield scrapy.Request(self.site + "/", callback=self.parse)

    def parse(self, response):
        links = [h for h in response.css("a::attr(href)").getall() if "/category/" in h or "/product/" in h]
        yield from response.follow_all(links, callback=self.parse)
        if "/product/" in response.url:
            fields = {"title": "h1", "sku": ".sku", "price": ".price", "category": ".category"}
            found = {name: response.css(css + "::text").get("").strip() for name, css in fields.items()}
            yield {"url": response.url, "label": self.label, **found}


class OtherSpider(scrapy.Spider):
    name = "other"
"""


def write_project(folder, url="http://127.0.0.1:1/scrapyd/", project="shopbot", username="owner", password="",
                  stamp="v1", spider=SPIDER):
    folder = Path(folder)
    (folder / "shopbot" / "spiders").mkdir(parents=True, exist_ok=True)
    (folder / "scrapy.cfg").write_text(SCRAPY_CFG.format(url=url, project=project, username=username,
                                                         password=password))
    (folder / "shopbot" / "__init__.py").write_text("")
    (folder / "shopbot" / "settings.py").write_text(SETTINGS.format(stamp=stamp))
    (folder / "shopbot" / "pipelines.py").write_text(PIPELINES)
    (folder / "shopbot" / "spiders" / "__init__.py").write_text("")
    (folder / "shopbot" / "spiders" / "shop.py").write_text(textwrap.dedent(spider))
    return folder


def scrapyd_deploy(folder, version, timeout=120):
    """Run the real ``scrapyd-deploy --version VERSION`` in ``folder``; return the finished process."""
    venv_bin = str(Path(sys.executable).parent)
    env = dict(os.environ, PATH=venv_bin + os.pathsep + os.environ.get("PATH", ""))
    return subprocess.run([os.path.join(venv_bin, "scrapyd-deploy"), "--version", version], cwd=folder, env=env,
                          capture_output=True, text=True, timeout=timeout)


def zip_project(folder, top="shopbot-project"):
    """The project folder as a zip (scrapy.cfg in one top folder), as a user would upload it."""
    folder = Path(folder)
    target = folder.parent / f"{folder.name}.zip"
    with zipfile.ZipFile(target, "w") as zf:
        for path in sorted(folder.rglob("*.py")) + [folder / "scrapy.cfg"]:
            zf.write(path, f"{top}/{path.relative_to(folder)}")
    return target.read_bytes()
