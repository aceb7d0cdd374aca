"""`make fuzz`: a full campaign (10,000 requests by default) against a fresh stack.

    python -m tests.fuzz [--requests N] [--seed S] [--max-seconds T] [--work DIR]

Prints the seed first, then the counts by RPC and status, and exits 1 when a request got
INTERNAL/UNKNOWN (or a 5xx), a service stopped answering its health checks or died, or
something was left half-written. The same seed draws the same requests.
"""

from __future__ import annotations

import argparse
import secrets
import sys
from pathlib import Path

from tests.fuzz.campaign import run_campaign


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.fuzz")
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--max-seconds", type=float, default=1800.0)
    parser.add_argument("--work", type=Path, default=None, help="keep logs and findings here")
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else secrets.randbelow(2**32)
    print(
        f"fuzz seed {seed}, {args.requests} requests, at most {args.max_seconds:.0f} s", flush=True
    )
    if args.work:
        args.work.mkdir(parents=True, exist_ok=True)
    report = run_campaign(args.requests, seed, args.max_seconds, args.work)
    print(report.render(), flush=True)
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
