"""demosite: a deterministic local shop for demos, integration tests and benchmarks (stdlib only)."""

from .catalog import PROFILES, Catalog, Category, Product, build_catalog
from .server import Site, SiteProcess, start_site, start_site_process

__all__ = ["PROFILES", "Catalog", "Category", "Product", "Site", "SiteProcess", "build_catalog", "start_site",
           "start_site_process"]
