"""A module that records being imported: tests name it where nothing may be imported.

On import it creates the file named by ``IMPORT_PROBE_MARKER`` (if set). Never import it
from test code itself: its absence from ``sys.modules`` is part of what tests check.
"""

import os

import scrapy

_marker = os.environ.get("IMPORT_PROBE_MARKER")
if _marker:
    with open(_marker, "a") as fh:
        fh.write(f"imported by pid {os.getpid()}\n")


class ProbeSpider(scrapy.Spider):
    name = "probe"


class X:
    pass
