"""demosite: a deterministic local shop for demos, integration tests and benchmarks (stdlib only)."""

from .catalog import PROFILES, Catalog, Category, Product, build_catalog
from .server import Site, start_site

__all__ = ["PROFILES", "Catalog", "Category", "Product", "Site", "build_catalog", "start_site"]
