"""Render completion certificates: HTML template -> PDF bytes -> PNG preview.

Pure functions only: a company's template, the learner's fields and an
optional logo go in, bytes come out. Nothing here touches the database,
RQ or storage; ``tasks`` wires these into the certificate job.

The template is a Jinja2 template rendered in a sandbox with autoescaping on,
so a learner called ``<script>...`` is printed as text. The HTML is then laid
out by xhtml2pdf, which would happily fetch whatever URL or file the markup
names. Two independent gates stop that:

1. :func:`make_link_callback` answers every resource xhtml2pdf asks for
   (``<img>``, ``<link>``, CSS ``@import``, ``url()``, ``@font-face``): only
   ``data:`` URIs and relative paths that resolve inside ``asset_dir`` pass;
   anything else is replaced by an empty ``data:`` URI, so nothing is read.
2. :func:`certificate_resource_policy` is xhtml2pdf's own resource policy for
   the render: no network at all, local reads confined to ``asset_dir`` (none
   without one), and size/time limits, which also covers the library's few
   code paths that do not consult ``link_callback``.

Text prints in :mod:`core.certificate_fonts`' stacks (every script, a fallback per glyph,
shaping), whatever family the CSS names. A bulk job renders ``planned``: the template is laid
out once per shape and each learner's values are set into it (:mod:`core.certificate_layout`);
what a plan cannot follow is laid out in full, as the dashboard's preview always is.
"""
from __future__ import annotations

import base64
import calendar
import hashlib
import io
import logging
import secrets
import shutil
import subprocess
import tempfile
import unicodedata
from collections.abc import Callable, Mapping
from datetime import date, datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from reportlab.pdfbase.ttfonts import TTFError
from xhtml2pdf import pisa
from xhtml2pdf.config.resources import RenderLimitError, ResourceAccessPolicy

from core import certificate_fonts, certificate_layout
from core.rendering import (
    MAX_SOURCE,
    MAX_VALUE,
    BoundedSandbox,
    CompileError,
    RenderError,
    render_document,
    render_marked_document,
)

log = logging.getLogger(__name__)

#: What a refused link becomes: an empty resource, so nothing is fetched or read.
REFUSED_RESOURCE = "data:,"

#: The fields of a certificate. The optional ones are empty when the learner has none; a template
#: that uses any other name the context lacks fails, naming it (undefined is strict).
FIELD_NAMES = ("learner_name", "course_name", "completion_date", "grade", "expiry_date", "issuer")
OPTIONAL_FIELDS = ("grade", "expiry_date", "issuer")

#: Crockford's base32 alphabet: no I, L, O or U to misread.
CODE_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
CODE_LENGTH = 20  # 100 bits of randomness

PREVIEW_DPI = 60
PREVIEW_TIMEOUT_S = 30

_LOGO_TYPES = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
)

#: Longest string or sequence a template expression may build (the shared sandbox's limit).
MAX_TEMPLATE_VALUE = MAX_VALUE


class CertificateSandbox(BoundedSandbox):
    """The bounded sandbox of ``core.rendering`` (arithmetic, repetition, loops, output and
    time all limited), autoescaping. Templates render through ``core.rendering.render_document``
    (its "document" environment is this one), which adds the hard time and memory bound."""

    def __init__(self) -> None:
        super().__init__(autoescape=True)


class CertificateError(ValueError):
    """A certificate cannot be produced from these inputs; ``reason`` is safe to show."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class CertificateTemplateError(CertificateError):
    """The company's template does not compile, render or lay out."""


class PreviewUnavailable(RuntimeError):
    """``pdftoppm`` (poppler-utils) is missing or failed."""


# --------------------------------------------------------------------------- codes


def new_verification_code() -> str:
    """Return an unguessable, URL-safe code: 20 Crockford base32 characters (100 bits)."""
    return "".join(secrets.choice(CODE_ALPHABET) for _ in range(CODE_LENGTH))


def checksum(pdf: bytes) -> str:
    """Return the SHA-256 of ``pdf`` as 64 lowercase hex digits."""
    return hashlib.sha256(pdf).hexdigest()


# --------------------------------------------------------------------------- resources


def make_link_callback(asset_dir: Path | None) -> Callable[[object, object], str]:
    """Build xhtml2pdf's ``link_callback``: allow ``data:`` and files inside ``asset_dir``.

    Args:
        asset_dir: the only directory relative links may name; ``None`` allows
            no files at all.

    Returns:
        A callback mapping each requested URI to what may be loaded instead:
        the URI itself for ``data:``, an absolute path inside ``asset_dir`` for
        an allowed relative link, and :data:`REFUSED_RESOURCE` for everything
        else (never a falsy value: xhtml2pdf would then use the original URI).
    """
    root = asset_dir.resolve() if asset_dir is not None else None

    def link_callback(uri: object, _relative: object) -> str:
        resolved = resolve_link(uri, root)
        if resolved is None:
            log.warning("Certificate template: refused resource %.80r", uri)
            return REFUSED_RESOURCE
        return resolved

    return link_callback


def resolve_link(uri: object, root: Path | None) -> str | None:
    """Return what ``uri`` may load as, or ``None`` when it is refused.

    Only ``data:`` URIs and plain relative paths are considered; schemes
    (``file:``, ``http:``...), network paths (``//host``), absolute paths,
    backslashes and ``..`` escapes out of ``root`` are refused.
    """
    if not isinstance(uri, str):
        return None
    uri = uri.strip()
    if uri[:5].lower() == "data:":
        return uri
    if root is None or not uri or uri.startswith(("/", "\\")) or "\\" in uri or "\x00" in uri:
        return None
    parts = urlsplit(uri)
    if parts.scheme or parts.netloc or not parts.path:
        return None
    candidate = (root / unquote(parts.path)).resolve()
    if not candidate.is_relative_to(root) or not candidate.is_file():
        return None
    return str(candidate)


def certificate_resource_policy(asset_dir: Path | None) -> ResourceAccessPolicy:
    """xhtml2pdf's policy for a certificate render: no network, files only in ``asset_dir``."""
    return ResourceAccessPolicy.server(
        base_dir=asset_dir.resolve() if asset_dir is not None else None,
        allow_remote=False,
        allowed_hosts=frozenset(),
        max_resources=50,
        max_render_seconds=60,
    )


# --------------------------------------------------------------------------- rendering


def logo_data_uri(logo: bytes | None) -> str:
    """Return ``logo`` as a ``data:`` URI ("" for none); PNG, JPEG and GIF only."""
    if not logo:
        return ""
    for magic, mime in _LOGO_TYPES:
        if logo.startswith(magic):
            return _data_uri(mime, logo)
    raise CertificateError("logo must be a PNG, JPEG or GIF image")


def qr_data_uri(text: str) -> str:
    """Return a QR code of ``text`` as a PNG ``data:`` URI (mask 0: a planned certificate
    draws the same modules)."""
    return certificate_layout.qr_png_data_uri(text)


def _data_uri(mime: str, data: bytes) -> str:
    """``data:<mime>;base64,...`` for ``data``."""
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _display(value: Any) -> Any:
    """Format one field for print: dates as "22 November 2026", ``None`` as ""."""
    if value is None:
        return ""
    if isinstance(value, str):  # composed, so "e" + two combining accents prints as the one letter "ễ"
        return unicodedata.normalize("NFC", value)
    if isinstance(value, datetime):
        value = value.date()
    if isinstance(value, date):
        return f"{value.day} {value:%B %Y}"
    return value


def template_context(fields: Mapping[str, Any], *, logo: bytes | None,
                     verify_url: str, code: str, qr: bool = True) -> dict[str, Any]:
    """Build the variables a template sees from the learner's ``fields`` (``qr``: with the
    QR code's PNG, which a planned certificate draws itself)."""
    context: dict[str, Any] = {name: "" for name in OPTIONAL_FIELDS}
    context.update({k: _display(v) for k, v in fields.items() if isinstance(k, str) and k.isidentifier()})
    context.update(code=code, verify_url=verify_url,
                   logo_src=logo_data_uri(logo), qr_src=qr_data_uri(verify_url) if qr else "")
    return context


def render_certificate_html(template_html: str, template_css: str, context: Mapping[str, Any],
                            budget_s: float | None = None) -> str:
    """Render the Jinja2 template in the bounded sandbox and put ``template_css`` in its head.

    An error names the template line and the undefined name or exception type, never a value."""
    return _render_html(template_html, template_css, context, budget_s)[0]


def render_marked_certificate_html(template_html: str, template_css: str, context: Mapping[str, Any],
                                   marked: set[str], budget_s: float | None = None
                                   ) -> tuple[str, list[tuple[str, str]]]:
    """``render_certificate_html`` with the values of ``marked`` printed as the layout's marks, and the
    book of what each mark stands for (``core.certificate_layout.skeleton`` takes both). The template
    runs in the renderer process, so the marks are made there, not by objects in ``context``."""
    return _render_html(template_html, template_css, context, budget_s, marked)


def _render_html(template_html: str, template_css: str, context: Mapping[str, Any], budget_s: float | None,
                 marked: set[str] | None = None) -> tuple[str, list[tuple[str, str]]]:
    if "</style" in template_css.lower():
        raise CertificateTemplateError("template CSS must not contain </style>")
    if len(template_css) > MAX_SOURCE:
        raise CertificateTemplateError(f"template CSS is longer than {MAX_SOURCE} characters")
    book: list[tuple[str, str]] = []
    try:
        if marked is None:
            html = render_document(template_html, dict(context), budget_s)
        else:
            html, book = render_marked_document(template_html, dict(context), marked, certificate_layout.NONCE,
                                                budget_s)
    except CompileError as exc:
        raise CertificateTemplateError(f"template does not compile: {exc.message}") from None
    except RenderError as exc:
        raise CertificateTemplateError(f"template does not render: {exc.message}") from None
    style = f"<style>\n{template_css}\n</style>\n"
    head_end = html.lower().find("</head>")
    if head_end < 0:
        return style + html, book
    return html[:head_end] + style + html[head_end:], book


def html_to_pdf(html: str, *, asset_dir: Path | None = None) -> bytes:
    """Lay ``html`` out with xhtml2pdf under the certificate resource rules, in the certificate fonts."""
    certificate_fonts.register()
    out = io.BytesIO()
    try:
        status = pisa.CreatePDF(
            html,
            dest=out,
            encoding="utf-8",
            link_callback=make_link_callback(asset_dir),
            resource_policy=certificate_resource_policy(asset_dir),
            capacity=-1,  # in memory: no learner's page in a temporary file (the certificate process writes none)
        )
    except (RenderLimitError, TTFError) as exc:
        raise CertificateTemplateError(f"template does not lay out: {exc}") from exc
    if status.err:
        raise CertificateTemplateError(f"template does not lay out ({status.err} errors)")
    return out.getvalue()


def render_certificate_pdf(template_html: str, template_css: str, fields: dict, *,
                           logo: bytes | None, verify_url: str, code: str,
                           asset_dir: Path | None = None, budget_s: float | None = None,
                           planned: bool = False) -> bytes:
    """Render one certificate as PDF bytes.

    Args:
        template_html: the company's Jinja2 HTML template (see
            :data:`DEFAULT_TEMPLATE_HTML` for the variables it may use).
        template_css: CSS added to the template's ``<head>``.
        fields: learner_name, course_name, completion_date, grade,
            expiry_date (``date`` values are formatted; other identifier keys
            are passed through).
        logo: the company's logo (PNG/JPEG/GIF) or ``None``.
        verify_url: the public verification link, also encoded as a QR code.
        code: the certificate's verification code.
        asset_dir: the one directory relative links may read from.
        planned: lay the template out once per shape and set only this learner's values into
            it (``core.certificate_layout``), as a bulk job does; a template or a value a plan
            cannot follow is laid out in full all the same.

    Raises:
        CertificateTemplateError: the template does not compile or render.
        CertificateError: the logo is not an image we accept.
    """
    context = template_context(fields, logo=logo, verify_url=verify_url, code=code, qr=not planned)
    if planned:
        pdf = _render_planned(template_html, template_css, context, asset_dir, budget_s)
        if pdf is not None:
            return pdf
        context["qr_src"] = qr_data_uri(verify_url)
    return html_to_pdf(render_certificate_html(template_html, template_css, context, budget_s), asset_dir=asset_dir)


#: The characters a planned layout's fonts carry for these fields, beyond ASCII's.
_DATE_CHARACTERS = "".join(sorted(set("".join(calendar.month_name[1:])) | set("0123456789 ")))


def _render_planned(template_html: str, template_css: str, context: dict[str, Any], asset_dir: Path | None,
                    budget_s: float | None) -> bytes | None:
    """The certificate from its template's plan, or ``None`` when it needs the full layout."""
    verify = context["verify_url"]
    per_learner = {name for name in context if name != "logo_src"}
    # the renderer prints the learner's values as marks and says which is which (the template runs there)
    skeleton = certificate_layout.skeleton(*render_marked_certificate_html(template_html, template_css, context,
                                                                           per_learner, budget_s))
    if not skeleton.plannable:
        return None
    charsets = {"code": CODE_ALPHABET, "verify_url": "".join(sorted(set(verify) | set(CODE_ALPHABET))),
                "completion_date": _DATE_CHARACTERS, "expiry_date": _DATE_CHARACTERS}
    key = (template_html, template_css, context["logo_src"], str(asset_dir), len(verify),
           certificate_fonts.generation())
    plan = certificate_layout.planner.plan(key, skeleton, lambda: certificate_layout.build_plan(
        skeleton, lambda html: html_to_pdf(html, asset_dir=asset_dir), charsets, verify))
    if plan is None:
        return None
    try:
        return plan.render({name: str(context[name]) for name in skeleton.fields}, verify)
    except Exception:  # noqa: BLE001 - a plan is an optimisation: the full layout stays right
        log.exception("Planned certificate failed; laid out in full")
        return None


# --------------------------------------------------------------------------- preview


def render_preview_png(pdf: bytes, *, dpi: int = PREVIEW_DPI) -> bytes:
    """Return the first page of ``pdf`` as PNG bytes, rasterised by ``pdftoppm``.

    Raises:
        PreviewUnavailable: ``pdftoppm`` is not installed (apt package
            ``poppler-utils``), timed out, or could not read the PDF.
    """
    binary = shutil.which("pdftoppm")
    if binary is None:
        raise PreviewUnavailable("pdftoppm not found: install poppler-utils for certificate previews")
    with tempfile.TemporaryDirectory(prefix="cert-preview-") as tmp:
        root = Path(tmp) / "page"
        args = [binary, "-png", "-r", str(dpi), "-f", "1", "-l", "1", "-singlefile", "-", str(root)]
        try:
            done = subprocess.run(args, input=pdf, capture_output=True, timeout=PREVIEW_TIMEOUT_S, check=False)
        except subprocess.TimeoutExpired as exc:
            raise PreviewUnavailable(f"pdftoppm took longer than {PREVIEW_TIMEOUT_S}s") from exc
        png = root.with_suffix(".png")
        if done.returncode != 0 or not png.is_file():
            detail = done.stderr.decode("utf-8", "replace").strip()[:200]
            raise PreviewUnavailable(f"pdftoppm failed ({done.returncode}): {detail}")
        return png.read_bytes()


# --------------------------------------------------------------------------- default template

DEFAULT_TEMPLATE_HTML = """\
<html>
<head><meta charset="utf-8"><title>Certificate of completion</title></head>
<body>
<table class="frame"><tr><td class="frame-outer">
<table class="frame"><tr><td class="frame-inner">
  {% if logo_src %}<div class="logo"><img src="{{ logo_src }}" height="58"></div>{% endif %}
  <p class="title">Certificate of Completion</p>
  <table class="rule" align="center"><tr><td>&nbsp;</td></tr></table>
  <p class="lead">This is to certify that</p>
  <p class="learner{% if learner_name|string|length > 45 %} learner-longer{% elif learner_name|string|length > 30 %}
    learner-long{% endif %}">{{ learner_name }}</p>
  <p class="lead lead-close">has successfully completed</p>
  <p class="course{% if course_name|string|length > 55 %} course-long{% endif %}">{{ course_name }}</p>
  <table class="facts" align="center"><tr>
    <td><span class="label">Completed</span><br><span class="value">{{ completion_date }}</span></td>
    {% if grade %}<td><span class="label">Grade</span><br><span class="value">{{ grade }}</span></td>{% endif %}
    {% if expiry_date %}<td><span class="label">Valid until</span><br>
      <span class="value">{{ expiry_date }}</span></td>{% endif %}
  </tr></table>
  <table class="verify"><tr>
    <td class="qr"><img src="{{ qr_src }}" width="82" height="82"></td>
    <td class="verify-text">
      <span class="label">Certificate code</span><br><span class="code">{{ code }}</span><br>
      <span class="label">Verify at</span><br><span class="url">{{ verify_url }}</span>
    </td>
    {% if issuer %}<td class="issuer"><div class="issuer-line"><span class="issuer-name">{{ issuer }}</span><br>
      <span class="label">Issued by</span></div></td>{% endif %}
  </tr></table>
</td></tr></table>
</td></tr></table>
</body>
</html>
"""

DEFAULT_TEMPLATE_CSS = """\
@page { size: a4 landscape; margin: 9mm; }
body { font-family: Helvetica; color: #1f2a44; font-size: 11pt; }
table.frame { width: 100%; }
td.frame-outer { border: 5pt solid #1f2a44; padding: 4pt; }
td.frame-inner { border: 1.5pt solid #b8912f; height: 189mm; padding: 9mm 18mm 6mm 18mm;
                 text-align: center; vertical-align: top; }
div.logo { height: 60px; text-align: center; }
p { margin: 0; text-align: center; }
p.title { font-family: Times-Roman; font-size: 36pt; color: #1f2a44; margin-top: 3mm; }
table.rule { width: 16%; margin-top: 3mm; }
table.rule td { font-size: 1pt; border-top: 1.5pt solid #b8912f; }
p.lead { font-size: 12pt; color: #5b6478; margin-top: 7mm; }
p.lead-close { margin-top: 1mm; }
p.learner { font-family: Times-Roman; font-weight: bold; font-size: 38pt; color: #b8912f;
            margin-top: 3mm; }
p.learner-long { font-size: 26pt; }
p.learner-longer { font-size: 20pt; }
p.course { font-size: 20pt; font-weight: bold; margin-top: 3mm; }
p.course-long { font-size: 15pt; }
table.facts { width: 72%; margin-top: 10mm; }
table.facts td { text-align: center; border-top: 0.75pt solid #b8912f; padding-top: 2mm; }
span.label { font-size: 8pt; color: #7a8194; text-transform: uppercase; }
span.value { font-size: 13pt; font-weight: bold; }
table.verify { width: 100%; margin-top: 13mm; }
td.qr { width: 90px; text-align: left; vertical-align: bottom; }
td.verify-text { text-align: left; vertical-align: bottom; padding-left: 3mm; font-size: 9pt; }
span.code { font-family: Courier; font-size: 12pt; font-weight: bold; letter-spacing: 1pt; }
span.url { font-size: 9pt; color: #1f2a44; }
td.issuer { width: 32%; text-align: center; vertical-align: bottom; }
div.issuer-line { border-top: 0.75pt solid #1f2a44; padding-top: 2mm; }
span.issuer-name { font-size: 12pt; font-weight: bold; }
"""
