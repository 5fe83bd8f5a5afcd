"""Certificates per minute on this machine: the default template with a logo.

Renders N certificates (default 200) with one worker process, then with two
(multiprocessing, like two RQ workers), and prints the rates. Only prints
figures; asserts nothing.

    .venv/bin/python bench/certificates.py [--count 200] [--workers 1 2]
"""
from __future__ import annotations

import argparse
import io
import multiprocessing
import os
import sys
import time
from datetime import date, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from PIL import Image, ImageDraw  # noqa: E402

from core.certificate_render import (DEFAULT_TEMPLATE_CSS, DEFAULT_TEMPLATE_HTML, new_verification_code,
                                     render_certificate_pdf)


def make_logo() -> bytes:
    """A 520x140 PNG logo, about the size a company uploads."""
    img = Image.new("RGB", (520, 140), "white")
    draw = ImageDraw.Draw(img)
    draw.rectangle([0, 0, 139, 139], fill="#1f2a44")
    draw.ellipse([25, 25, 115, 115], fill="#b8912f")
    draw.text((160, 60), "ACME LEARNING", fill="#1f2a44")
    out = io.BytesIO()
    img.save(out, "PNG")
    return out.getvalue()


def render_one(i: int, logo: bytes) -> int:
    """Render certificate ``i``; return its size in bytes."""
    code = new_verification_code()
    fields = {"learner_name": f"Learner Number {i:04d}", "course_name": "Workplace Health & Safety Level 2",
              "completion_date": date(2026, 1, 1) + timedelta(days=i % 365), "grade": f"{60 + i % 40}%",
              "expiry_date": date(2028, 1, 1), "issuer": "Acme Learning Ltd"}
    pdf = render_certificate_pdf(DEFAULT_TEMPLATE_HTML, DEFAULT_TEMPLATE_CSS, fields, logo=logo,
                                 verify_url=f"https://lms.example.com/verify/{code}", code=code)
    return len(pdf)


def render_range(args: tuple[range, bytes]) -> int:
    """Render every certificate in the range; return the bytes produced (worker entry point)."""
    numbers, logo = args
    return sum(render_one(i, logo) for i in numbers)


def warm_up(_: int) -> None:
    """Import and render once so the timed run does not pay start-up costs."""
    render_one(0, make_logo())


def run(count: int, workers: int) -> tuple[float, int]:
    """Render ``count`` certificates over ``workers`` processes; return (seconds, bytes)."""
    logo = make_logo()
    shares = [(range(w, count, workers), logo) for w in range(workers)]
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        pool.map(warm_up, range(workers), chunksize=1)
        started = time.perf_counter()
        produced = sum(pool.map(render_range, shares, chunksize=1))
        return time.perf_counter() - started, produced


def main() -> None:
    """Parse arguments, run each worker count, print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    options = parser.parse_args()
    print(f"default template + logo, {options.count} certificates per run, {os.cpu_count()} CPUs")
    for workers in options.workers:
        seconds, produced = run(options.count, workers)
        per_minute = options.count / seconds * 60
        print(f"{workers} worker process{'es' if workers > 1 else ''}: {seconds:6.2f} s, "
              f"{per_minute:8.0f} certificates/min, {seconds / options.count * 1000:5.1f} ms wall each, "
              f"{produced / options.count / 1024:5.1f} KiB average PDF")


if __name__ == "__main__":
    main()
