"""Certificates per minute on this machine: the default template with a logo, names in many scripts.

Four ways of making the same certificates, each with one worker process and then two
(multiprocessing, like two RQ workers), in the same run:

- ``bare``: a ReportLab page with the learner's fields drawn in the certificate fonts and no
  layout at all (the floor: what the PDF and its font subsets cost);
- ``old``: the template laid out by xhtml2pdf in ReportLab's built-in fonts, which embed
  nothing and print blanks for most of these names (the path before the certificate fonts);
- ``full``: the template laid out by xhtml2pdf for every learner, in the certificate fonts;
- ``planned``: the template laid out once per shape, each learner's fields set into it (what
  ``tasks.certificates`` does).

Each worker first renders every name once (fonts loaded; for ``planned`` the plans made, which
is printed apart: once per worker and template shape in a real job too). Only prints figures;
asserts nothing.

    .venv/bin/python bench/certificates.py [--count 1200] [--full-count 200] [--workers 1 2]
"""
from __future__ import annotations

import argparse
import io
import logging
import multiprocessing
import os
import sys
import time
from datetime import date, timedelta
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from PIL import Image, ImageDraw  # noqa: E402
from reportlab.pdfgen.canvas import Canvas  # noqa: E402

from core import certificate_fonts, certificate_render  # noqa: E402
from core.certificate_render import (  # noqa: E402
    DEFAULT_TEMPLATE_CSS,
    DEFAULT_TEMPLATE_HTML,
    new_verification_code,
    render_certificate_pdf,
)

#: Two in three names Latin (ASCII or not), the rest in other scripts.
NAMES = ("Learner Number {i:04d}", "Ann Müller-Ramírez", "Łukasz Żółć", "Nguyễn Thị Ánh", "John Smith {i}",
         "王小明", "Иван Петров", "محمد عبد الله", "Maria Garcia {i}", "김민준", "Olga Ivanova", "Sarah Cohen {i}")


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


def fields_of(i: int) -> dict:
    return {"learner_name": NAMES[i % len(NAMES)].format(i=i), "course_name": "Workplace Health & Safety Level 2",
            "completion_date": date(2026, 1, 1) + timedelta(days=i % 365), "grade": f"{60 + i % 40}%",
            "expiry_date": date(2028, 1, 1), "issuer": "Acme Learning Ltd"}


def render_one(i: int, logo: bytes, mode: str) -> int:
    """Render certificate ``i`` the ``mode`` way; return its size in bytes."""
    code = new_verification_code()
    url = f"https://lms.example.com/verify/{code}"
    fields = fields_of(i)
    if mode == "bare":
        return len(bare_page(fields, code, url))
    return len(render_certificate_pdf(DEFAULT_TEMPLATE_HTML, DEFAULT_TEMPLATE_CSS, fields, logo=logo,
                                      verify_url=url, code=code, planned=mode == "planned"))


def bare_page(fields: dict, code: str, url: str) -> bytes:
    """The fields on an A4 landscape page, no layout: the cost of the PDF itself."""
    certificate_fonts.register()
    out = io.BytesIO()
    canvas = Canvas(out, pagesize=(842, 595))
    for font, size, y, text in (("CertSerif-Bold", 38, 380, fields["learner_name"]),
                                ("CertSans-Bold", 20, 320, fields["course_name"]),
                                ("CertSans-Bold", 13, 250, str(fields["completion_date"])),
                                ("CertMono-Bold", 12, 120, code), ("CertSans", 9, 100, url),
                                ("CertSans-Bold", 12, 80, fields["issuer"])):
        canvas.setFont(font, size)
        canvas.drawCentredString(421, y, certificate_fonts.visual(text))
    canvas.showPage()
    canvas.save()
    return out.getvalue()


def render_range(args: tuple[range, bytes, str]) -> int:
    """Render every certificate in the range; return the bytes produced (worker entry point)."""
    numbers, logo, mode = args
    return sum(render_one(i, logo, mode) for i in numbers)


def warm_up(mode: str) -> float:
    """Render every name once (fonts loaded, plans made); return how long that took."""
    logging.getLogger("xhtml2pdf").setLevel(logging.ERROR)  # the old fonts' "no glyph for ..." warnings
    if mode == "old":  # this worker process lays out in the built-in fonts, as before
        certificate_render.certificate_fonts = SimpleNamespace(register=lambda: None)
    started = time.perf_counter()
    logo = make_logo()
    for i in range(len(NAMES)):
        render_one(i, logo, mode)
    return time.perf_counter() - started


def run(count: int, workers: int, mode: str) -> tuple[float, int, float]:
    """Render ``count`` certificates over ``workers`` processes; return (seconds, bytes, warm-up s)."""
    logo = make_logo()
    shares = [(range(w, count, workers), logo, mode) for w in range(workers)]
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        warm = max(pool.map(warm_up, [mode] * workers, chunksize=1))
        started = time.perf_counter()
        produced = sum(pool.map(render_range, shares, chunksize=1))
        return time.perf_counter() - started, produced, warm


def main() -> None:
    """Parse arguments, run each way and worker count, print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1200, help="certificates per run (bare, planned)")
    parser.add_argument("--full-count", type=int, default=200, help="certificates per run of the full layout")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    options = parser.parse_args()
    print(f"default template + logo, names in {len(NAMES)} scripts and forms, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f}")
    rates: dict[tuple[str, int], float] = {}
    for workers in options.workers:
        for mode in ("bare", "old", "full", "planned"):
            count = options.full_count if mode in ("old", "full") else options.count
            seconds, produced, warm = run(count, workers, mode)
            rates[mode, workers] = per_minute = count / seconds * 60
            print(f"{mode:8s} {workers} worker process{'es' if workers > 1 else '  '}: {count:5d} in {seconds:6.2f} s, "
                  f"{per_minute:8.0f} certificates/min, {seconds / count * 1000:6.1f} ms wall each, "
                  f"{produced / count / 1024:5.1f} KiB average PDF"
                  + (f" (plans and fonts first: {warm:.1f} s)" if mode == "planned" else ""))
        print(f"  {workers} worker(s): planned = {rates['planned', workers] / rates['old', workers]:.1f}x the old "
              f"path, {rates['planned', workers] / rates['full', workers]:.1f}x the full layout, "
              f"{rates['planned', workers] / rates['bare', workers]:.2f}x the bare page")


if __name__ == "__main__":
    main()
