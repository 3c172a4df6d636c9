"""``python -m demosite --profile demo --port 8001 [--host 127.0.0.1] [--delay-ms N] [--seed N]``

Serves in the foreground until SIGTERM or SIGINT, then exits 0 without a traceback.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading

from .catalog import PROFILES
from .server import start_site


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m demosite", description=__doc__.splitlines()[0])
    parser.add_argument("--profile", choices=sorted(PROFILES), default="demo")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001, help="0 picks a free port")
    parser.add_argument("--delay-ms", type=int, default=0, help="fixed delay added to every HTML page")
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args(argv)

    done = threading.Event()

    def _stop(signum, frame):
        done.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        site = start_site(args.profile, args.host, args.port, args.delay_ms, args.seed)
    except OSError as exc:
        print(f"demosite: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 2
    cat = site.catalog
    print(f"demosite ({args.profile}): {len(cat.products)} products in {len(cat.categories)} categories, "
          f"serving on {site.url}/", flush=True)
    while not done.wait(0.5):
        pass
    site.stop()
    print("demosite: stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
