"""`make bench`: every benchmark in turn, each rewriting its own section of bench/RESULTS.md.

Run on an otherwise idle machine: each compares Crawlsite with a baseline in the same run, but
wall-clock numbers still move with other load.
"""

import subprocess
import sys

BENCHES = ["engine_bench", "live_bench", "control_bench", "export_bench", "conductor_bench", "schedule_bench",
           "coverage_bench", "politeness_bench"]


def main():
    only = sys.argv[1:] or BENCHES
    failed = []
    for name in only:
        print(f"== bench.{name}", flush=True)
        if subprocess.run([sys.executable, "-m", f"bench.{name}"]).returncode != 0:
            failed.append(name)
    if failed:
        print("failed:", ", ".join(failed))
    return 1 if failed else 0


sys.exit(main())
