"""Measure demosite throughput over keep-alive connections.

    python -m demosite.bench [--profile bench] [--clients 4] [--seconds 5] [--url http://...]

Without ``--url`` the site is started in this process (one server process, as tests use it) and the
clients run in separate processes, each with one persistent HTTP/1.1 connection, cycling through
every page of the catalog (home, listings, products).
"""

from __future__ import annotations

import argparse
import http.client
import multiprocessing as mp
import time
from urllib.parse import urlsplit

from .catalog import build_catalog


def _paths(profile: str) -> list[str]:
    cat = build_catalog(profile)
    paths = ["/"]
    for c in cat.categories:
        paths += [f"/category/{c.slug}/"] + [f"/category/{c.slug}/?page={n}" for n in range(2, cat.pages(c.slug) + 1)]
    paths += [f"/product/{p.sku}/" for p in cat.products]
    return paths


def _client(url: str, paths: list[str], offset: int, seconds: float, out) -> None:
    u = urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
    n = errors = nbytes = 0
    i = offset
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        conn.request("GET", paths[i % len(paths)])
        resp = conn.getresponse()
        body = resp.read()
        nbytes += len(body)
        if resp.status != 200:
            errors += 1
        n += 1
        i += 1
    conn.close()
    out.put((n, errors, nbytes))


def run(url: str, profile: str, clients: int, seconds: float) -> dict:
    paths = _paths(profile)
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=_client, args=(url, paths, k * len(paths) // clients, seconds, q))
             for k in range(clients)]
    for p in procs:
        p.start()
    results = [q.get(timeout=seconds + 60) for _ in procs]
    for p in procs:
        p.join()
    n = sum(r[0] for r in results)
    return {"pages": n, "errors": sum(r[1] for r in results), "bytes": sum(r[2] for r in results),
            "seconds": seconds, "pages_per_s": round(n / seconds), "distinct_pages": len(paths),
            "clients": clients}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m demosite.bench")
    ap.add_argument("--profile", default="bench")
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--url", default="")
    a = ap.parse_args(argv)
    site = None
    url = a.url
    if not url:
        from .server import start_site
        site = start_site(a.profile)
        url = site.url
    try:
        print(run(url, a.profile, a.clients, a.seconds), flush=True)
    finally:
        if site:
            site.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
