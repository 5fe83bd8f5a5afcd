"""Certificates made in a bounded child process: ``render_pdf``.

``core.rendering`` bounds a certificate template's rendering; laying the HTML out as a PDF
(xhtml2pdf, ReportLab) is the other half, and it has no hard bound of its own: xhtml2pdf reads
the clock between elements (a 60 s policy), so one large element or a long table holds the
process that lays it out that long and takes what memory it needs (3,000 table rows: 3 s and
about 110 MB here; a template may print 100,000). So a whole certificate (the template
rendered, laid out in full or from its plan, the PDF) is made in a child process of its own
(``core.bounded``): its memory is capped (``CERTIFICATE_MEMORY_MB`` over what it needs at
rest), the alarm stops the template at its render budget and the layout at the certificate's,
and the parent kills it half a second past that. Planned layouts (``core.certificate_layout``)
live in that child, per template shape, as they lived in the worker before.

The child is heavy (the fonts, xhtml2pdf: about 190 MB, a few seconds to start), so one is
kept per process and stopped after ``IDLE_S`` without work. ``python -m core.certificate_process
<memory MB>`` is the child's entry point.
"""
from __future__ import annotations

import sys
import time
from datetime import date
from pathlib import Path

from core import bounded, certificate_fonts, rendering
from core.certificate_render import (
    DEFAULT_TEMPLATE_CSS,
    DEFAULT_TEMPLATE_HTML,
    CertificateError,
    CertificateTemplateError,
    render_certificate_pdf,
)

#: seconds a worker's certificate may take in all (the template's render has RENDER_BUDGET_S of it)
CERTIFICATE_BUDGET_S = 30.0
#: seconds a dashboard preview or a template check may take (its render: PREVIEW_BUDGET_S)
CERTIFICATE_PREVIEW_BUDGET_S = 10.0
#: memory one certificate may add to the child (MB)
CERTIFICATE_MEMORY_MB = 768
#: an idle child is stopped after this (seconds)
IDLE_S = 300.0
#: descriptors the child may hold: the protocol's and the font files it opens as it lays out
_FILES = 256

_pool = bounded.Pool("core.certificate_process", CERTIFICATE_MEMORY_MB, spawn_timeout_s=60.0, idle_s=IDLE_S)


def pool() -> bounded.Pool:
    """This process's certificate children (the tests look at them)."""
    return _pool


def _words(budget_s: float) -> str:
    return f"template does not lay out: the certificate takes longer than {budget_s:g} s to make"


def render_pdf(template_html: str, template_css: str, fields: dict, *, logo: bytes | None, verify_url: str,
               code: str, asset_dir: Path | None = None, planned: bool = False, preview: bool = False) -> bytes:
    """``core.certificate_render.render_certificate_pdf`` in the certificate child, under its bounds
    (``preview``: the dashboard's shorter ones). Raises ``CertificateTemplateError`` (the template,
    its layout or a limit, in words) or ``CertificateError`` (the logo)."""
    budget = CERTIFICATE_PREVIEW_BUDGET_S if preview else CERTIFICATE_BUDGET_S
    render_budget = rendering.PREVIEW_BUDGET_S if preview else rendering.RENDER_BUDGET_S
    try:
        child = _pool.take()
    except bounded.ChildGone as exc:
        raise rendering.RendererUnavailable(exc.reason) from None
    deadline = time.monotonic() + budget  # from here: a child's start is not the certificate's time
    keep = False
    try:
        child.send(("pdf", (template_html, template_css, fields, logo, verify_url, code,
                            str(asset_dir) if asset_dir is not None else None, planned),
                    certificate_fonts.font_dirs(), deadline, budget, render_budget))
        answer = child.recv(deadline + bounded.GRACE_S)
        keep = answer[-1]
    except bounded.ChildTimeout:
        raise CertificateTemplateError(_words(budget)) from None
    except bounded.ChildGone as exc:
        raise CertificateTemplateError(f"template does not lay out: it stopped the certificate renderer "
                                       f"({exc.reason})") from None
    finally:
        _pool.give(child) if keep else child.kill()
    if answer[0] == "ok":
        return answer[1]
    raise (CertificateError if answer[1] == "certificate" else CertificateTemplateError)(answer[2])


# --------------------------------------------------------------------------- the child

def _serve(channel: bounded.ChildChannel) -> None:
    while (request := channel.recv()) is not None:
        _, args, font_dirs, deadline, budget, render_budget = request
        html, css, fields, logo, verify_url, code, asset_dir, planned = args
        bounded.cpu_allowance(max(deadline - time.monotonic(), 0) + bounded.GRACE_S)
        if font_dirs != certificate_fonts.font_dirs():
            certificate_fonts.configure(font_dirs)
        try:
            rendering.arm(deadline, budget)
            try:
                pdf = render_certificate_pdf(html, css, fields, logo=logo, verify_url=verify_url, code=code,
                                             asset_dir=Path(asset_dir) if asset_dir else None, planned=planned,
                                             budget_s=render_budget)
            finally:
                rendering.disarm()
        except rendering.TimeLimit:
            channel.send(("error", "template", _words(budget), False))
            return
        except MemoryError:
            channel.send(("error", "template", f"template does not lay out: the certificate needs more than "
                                               f"{CERTIFICATE_MEMORY_MB} MB of memory", False))
            return
        except CertificateTemplateError as exc:
            # the template's own time limit came from the alarm, inside code that leaves nothing to trust
            alive = "takes longer than" not in exc.reason
            channel.send(("error", "template", exc.reason, alive))
            if not alive:
                return
            continue
        except CertificateError as exc:
            channel.send(("error", "certificate", exc.reason, True))
            continue
        except Exception as exc:  # noqa: BLE001 - whatever a template makes the layout raise fails that certificate
            channel.send(("error", "template", f"template does not lay out ({type(exc).__name__})", False))
            return
        channel.send(("ok", pdf, True))


def main() -> None:
    memory_mb = int(sys.argv[1])
    channel = bounded.ChildChannel()
    rendering.render_here()
    # imports, fonts and a first layout before the limits: a request pays none of them
    render_certificate_pdf(DEFAULT_TEMPLATE_HTML, DEFAULT_TEMPLATE_CSS,
                           {"learner_name": "Ada Lovelace", "course_name": "Warm-up", "completion_date": date.today()},
                           logo=None, verify_url="https://example.invalid/verify/0", code="0")
    bounded.child_limits(memory_mb, files=_FILES)
    channel.send(("ready",))
    _serve(channel)


if __name__ == "__main__":
    main()
