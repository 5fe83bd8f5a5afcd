"""Bench: what checking every recipient's fields costs a job request (``core.jobs.lacking_fields``).

A 50,000-recipient ``POST /api/v1/jobs`` now checks each recipient's data against the template and the
job type before anything is stored. This times that check against a bare loop over the same recipients
that only validates each address (what the request did per recipient before), in the same run, and
prints the ratio and the check's share of a request's whole acceptance time given as ``--accept-s``
(the README's figure for the 50k POST; default 1.48 s).

Usage: .venv/bin/python bench/fields.py [--recipients 50000] [--rounds 5] [--accept-s 1.48]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from types import SimpleNamespace

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from core.jobs import lacking_fields  # noqa: E402
from core.rendering import valid_email  # noqa: E402


def bare(recipients: list[dict]) -> int:
    return sum(1 for r in recipients if valid_email(str(r.get("email") or "").strip()))


def best(fn, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times), statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipients", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--accept-s", type=float, default=1.48)
    args = parser.parse_args()
    people = [{"email": f"user{i}@acme.test", "data": {"firstname": f"U{i}", "password": f"Pw-{i}"}}
              for i in range(args.recipients)]
    compiled = SimpleNamespace(required=("firstname", "password"))  # what a password mail's template uses
    base = best(lambda: bare(people), args.rounds)
    check = best(lambda: lacking_fields("csv_import", compiled, people, bulk=False), args.rounds)
    print(f"recipients: {args.recipients}")
    print(f"bare address loop: {base[0] * 1000:.1f} ms (median {base[1] * 1000:.1f})")
    print(f"field check: {check[0] * 1000:.1f} ms (median {check[1] * 1000:.1f})")
    print(f"ratio check/bare: {check[0] / base[0]:.2f}x")
    print(f"check as a share of a {args.accept_s:g} s acceptance: {check[0] / args.accept_s * 100:.1f}%")


if __name__ == "__main__":
    main()
