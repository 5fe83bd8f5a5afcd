"""tasks.certificate_render: templates, escaping, what xhtml2pdf may fetch, previews."""
from __future__ import annotations

import hashlib
import io
import os
import shutil
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import segno
from PIL import Image, ImageDraw, ImageFont
from pypdf import PdfReader
from xhtml2pdf import pisa

from core import certificate_render as cr
from tests.support.servers import free_port

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "tests" / "artifacts"
PASSWD_MARKER = "root:x:0:0"

FIELDS = {
    "learner_name": "Ann Müller-Ramírez",
    "course_name": "Workplace Health & Safety Level 2",
    "completion_date": date(2026, 11, 22),
    "grade": "94%",
    "expiry_date": date(2028, 11, 22),
    "issuer": "Acme Learning Ltd",
}


# --------------------------------------------------------------------------- helpers


def make_logo() -> bytes:
    """A small PNG logo: a gold disc on navy and the company name."""
    img = Image.new("RGB", (520, 140), "white")
    draw = ImageDraw.Draw(img)
    draw.rectangle([0, 0, 139, 139], fill="#1f2a44")
    draw.ellipse([25, 25, 115, 115], fill="#b8912f")
    draw.text((160, 45), "ACME LEARNING", fill="#1f2a44", font=ImageFont.load_default(size=40))
    out = io.BytesIO()
    img.save(out, "PNG")
    return out.getvalue()


def png_bytes(color: str = "red") -> bytes:
    """A 40x40 PNG: an image that would show up in the PDF if it were ever read."""
    out = io.BytesIO()
    Image.new("RGB", (40, 40), color).save(out, "PNG")
    return out.getvalue()


def render(template_html: str = cr.DEFAULT_TEMPLATE_HTML, template_css: str = cr.DEFAULT_TEMPLATE_CSS,
           fields: dict | None = None, *, logo: bytes | None = None, asset_dir: Path | None = None) -> bytes:
    code = "TESTCODE0123456789AB"
    return cr.render_certificate_pdf(template_html, template_css, dict(FIELDS if fields is None else fields),
                                     logo=logo, verify_url=f"https://lms.example.com/verify/{code}",
                                     code=code, asset_dir=asset_dir)


def page_text(pdf: bytes) -> str:
    reader = PdfReader(io.BytesIO(pdf))
    assert len(reader.pages) == 1
    return reader.pages[0].extract_text()


def image_count(pdf: bytes) -> int:
    return len(PdfReader(io.BytesIO(pdf)).pages[0].images)


class Recorder(BaseHTTPRequestHandler):
    """Answers every GET with a PNG, and records the path it was asked for."""

    requests: list[str]

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self.requests.append(self.path)
        body = png_bytes("blue")
        self.send_response(200)
        self.send_header("content-type", "image/png")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        return None


@pytest.fixture
def http_trap() -> Iterator[tuple[str, list[str]]]:
    """A local HTTP server that records any request; yields (base url, requests)."""
    handler = type("TrapHandler", (Recorder,), {"requests": []})
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", handler.requests
    finally:
        server.shutdown()
        server.server_close()


_audit_log: list[tuple[str, tuple]] | None = None
_hook_installed = False


def _audit_hook(event: str, args: tuple) -> None:
    if _audit_log is not None and event in ("open", "socket.connect", "os.listdir", "os.scandir"):
        _audit_log.append((event, args))


@contextmanager
def audited() -> Iterator[list[tuple[str, tuple]]]:
    """Record every file open, directory listing and socket connect made inside the block."""
    global _audit_log, _hook_installed
    if not _hook_installed:
        sys.addaudithook(_audit_hook)  # process-wide, but records only inside this block
        _hook_installed = True
    events: list[tuple[str, tuple]] = []
    _audit_log = events
    try:
        yield events
    finally:
        _audit_log = None


def opened_paths(events: list[tuple[str, tuple]]) -> set[str]:
    """Resolved paths of the files opened in ``events``."""
    paths = set()
    for event, args in events:
        if event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
            paths.add(os.path.realpath(os.fsdecode(args[0])))
    return paths


# --------------------------------------------------------------------------- rendering


def test_default_template_is_one_landscape_a4_page_with_every_field() -> None:
    pdf = render(logo=make_logo())
    reader = PdfReader(io.BytesIO(pdf))
    assert len(reader.pages) == 1
    box = reader.pages[0].mediabox
    assert (round(float(box.width)), round(float(box.height))) == (842, 595)
    text = reader.pages[0].extract_text()
    for expected in ("Ann Müller-Ramírez", "Workplace Health & Safety Level 2", "22 November 2026",
                     "94%", "22 November 2028", "TESTCODE0123456789AB",
                     "https://lms.example.com/verify/TESTCODE0123456789AB", "Acme Learning Ltd"):
        assert expected in text
    assert image_count(pdf) == 2  # logo + QR code


def test_qr_code_in_the_pdf_encodes_the_verify_url() -> None:
    url = "https://lms.example.com/verify/TESTCODE0123456789AB"
    images = [im.image for im in PdfReader(io.BytesIO(render())).pages[0].images]
    [qr_image] = [im for im in images if im.width == im.height]
    expected = segno.make(url, error="m", micro=False, mask=0).matrix  # the renderer fixes the mask
    scale = qr_image.width // (len(expected) + 4)  # 2 modules of quiet zone each side
    gray = qr_image.convert("L")
    seen = [[gray.getpixel(((col + 2) * scale + scale // 2, (row + 2) * scale + scale // 2)) < 128
             for col in range(len(expected))] for row in range(len(expected))]
    assert seen == [[bool(module) for module in row] for row in expected]


def test_optional_fields_and_logo_may_be_missing() -> None:
    pdf = render(fields={"learner_name": "Bo Li", "course_name": "Fire Safety", "completion_date": "2026-01-05"})
    text = page_text(pdf)
    assert "Bo Li" in text and "Fire Safety" in text
    assert "Grade" not in text.title() and "Valid Until" not in text.title()
    assert image_count(pdf) == 1  # the QR code only


def test_long_names_still_fit_on_one_page() -> None:
    fields = {**FIELDS, "learner_name": "Maximilian Alexander Christopher Montgomery-Fitzwilliam III",
              "course_name": "Advanced Occupational Health, Safety and Environmental Management "
                             "for Supervisors and Line Managers (2026 edition)"}
    assert "Montgomery-Fitzwilliam" in page_text(render(fields=fields, logo=make_logo()))


def test_learner_script_is_escaped_text_not_markup() -> None:
    fields = {**FIELDS, "learner_name": "<script>alert(1)</script><img src=x onerror=alert(2)>"}
    context = cr.template_context(fields, logo=None, verify_url="https://x.example/v/C", code="C")
    html = cr.render_certificate_html(cr.DEFAULT_TEMPLATE_HTML, "", context)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;&lt;img src=x onerror=alert(2)&gt;" in html
    assert "<script>" not in html
    pdf = render(fields=fields)
    assert "<script>alert(1)</script><img src=x onerror=alert(2)>" in page_text(pdf)
    assert image_count(pdf) == 1  # the learner's <img> did not become an image


def test_script_in_a_template_is_not_interpreted() -> None:
    template = ("<html><body><p>{{ learner_name }}</p>"
                "<script>document.write('INJECTED')</script>"
                "<a href=\"javascript:alert(2)\">link</a></body></html>")
    pdf = render(template, "")
    text = page_text(pdf)
    assert "Ann Müller-Ramírez" in text and "INJECTED" not in text
    reader = PdfReader(io.BytesIO(pdf))
    root = reader.trailer["/Root"]
    assert "/OpenAction" not in root and "/AA" not in root
    assert "/JavaScript" not in root.get("/Names", {})
    assert b"/JavaScript" not in pdf and b"/JS " not in pdf and b"javascript:" not in pdf.lower()


@pytest.mark.parametrize("template", [
    "{% for %}",
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ 'a' * 10**9 }}",
    "{{ 10 ** 100000 }}",
    "{{ range(10**9) | list }}",
    "{{ undefined_thing.attribute }}",
])
def test_bad_or_hostile_templates_raise_template_error(template: str) -> None:
    with pytest.raises(cr.CertificateTemplateError):
        render(template, "")


@pytest.mark.parametrize(("template", "css"), [
    ("<p style='font-family: x'>{{ learner_name }}</p>",
     "@font-face { font-family: x; src: url(data:font/ttf;base64,AAAAAAAA); }"),
    ("<div>" * 400 + "deep" + "</div>" * 400, ""),
])
def test_templates_that_cannot_lay_out_raise_template_error(template: str, css: str) -> None:
    with pytest.raises(cr.CertificateTemplateError, match="does not lay out"):
        render(template, css)


def test_css_cannot_close_the_style_element() -> None:
    with pytest.raises(cr.CertificateTemplateError, match="</style>"):
        render(cr.DEFAULT_TEMPLATE_HTML, "p{}</STYLE><img src=x>")


def test_logo_must_be_an_image() -> None:
    with pytest.raises(cr.CertificateError, match="PNG, JPEG or GIF"):
        render(logo=b"<svg xmlns='http://www.w3.org/2000/svg'/>")


def test_dates_are_formatted_and_extra_fields_pass_through() -> None:
    context = cr.template_context({"completion_date": date(2026, 3, 1), "cohort": "B", "bad key": 1},
                                  logo=None, verify_url="https://x.example/v/C", code="C")
    assert context["completion_date"] == "1 March 2026"
    assert context["cohort"] == "B" and "bad key" not in context
    assert context["grade"] == "" and context["logo_src"] == ""
    assert context["qr_src"].startswith("data:image/png;base64,")


# --------------------------------------------------------------------------- what may be fetched


def hostile_template(trap: str, outside: Path) -> tuple[str, str]:
    """Markup and CSS naming every route we know xhtml2pdf fetches through."""
    html = f"""<html><head>
<link rel="stylesheet" href="{trap}/link.css">
<link rel="stylesheet" href="file://{outside}/evil.css">
<style>@import url({trap}/import-in-template.css);</style>
</head><body>
<p>{{{{ learner_name }}}}</p>
<img src="file:///etc/passwd">
<img src="{trap}/x.png">
<img src="https://127.0.0.1:{trap.rsplit(':', 1)[1]}/tls.png">
<img src="//127.0.0.1:{trap.rsplit(':', 1)[1]}/scheme-relative.png">
<img src="/etc/passwd">
<img src="{outside}/outside.png">
<img src="file://{outside}/outside.png">
<img src="../outside/outside.png">
<img src="sub/../../outside/outside.png">
<img src="%2e%2e/outside/outside.png">
<img src="link-out.png">
<img src="ftp://127.0.0.1/x.png">
<div style="background-image: url({trap}/inline-bg.png)">bg</div>
<div style="background-image: url(file:///etc/passwd)">bg2</div>
<pdf:font name="evil" src="{trap}/font.ttf"/>
</body></html>"""
    css = f"""@import url({trap}/import.css);
@import "file:///etc/passwd";
@import url("{outside}/evil.css");
@font-face {{ font-family: evil; src: url({trap}/font.ttf); }}
@font-face {{ font-family: evil2; src: url(file:///etc/passwd); }}
@page {{ background-image: url({trap}/page-bg.png); }}
body {{ background-image: url(file://{outside}/outside.png); font-family: evil; }}
p {{ background: url(/etc/passwd); }}
"""
    return html, css


def test_hostile_template_fetches_and_reads_nothing(http_trap: tuple[str, list[str]], tmp_path: Path) -> None:
    trap, requests = http_trap
    assets = tmp_path / "assets"
    outside = tmp_path / "outside"
    assets.mkdir()
    outside.mkdir()
    (outside / "outside.png").write_bytes(png_bytes())
    (outside / "evil.css").write_text("p { color: red }")
    (assets / "link-out.png").symlink_to(outside / "outside.png")
    html, css = hostile_template(trap, outside)

    with audited() as audit:
        pdf = render(html, css, asset_dir=assets)

    assert requests == []
    assert [event for event, _ in audit if event == "socket.connect"] == []
    opened = opened_paths(audit)
    assert "/etc/passwd" not in opened
    assert not any(path.startswith(str(outside.resolve())) for path in opened)
    text = page_text(pdf)
    assert "Ann Müller-Ramírez" in text and PASSWD_MARKER not in text
    assert PASSWD_MARKER.encode() not in pdf
    assert image_count(pdf) == 0  # not one of the images loaded


def test_relative_assets_inside_asset_dir_are_allowed(tmp_path: Path) -> None:
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "seal.png").write_bytes(png_bytes("green"))
    template = '<html><body><p>{{ learner_name }}</p><img src="img/seal.png"></body></html>'
    with audited() as audit:
        pdf = render(template, "", asset_dir=tmp_path)
    assert image_count(pdf) == 1
    assert str((tmp_path / "img" / "seal.png").resolve()) in opened_paths(audit)
    assert image_count(render(template, "", asset_dir=None)) == 0  # no asset_dir: no files at all


@pytest.mark.parametrize("uri", [
    "file:///etc/passwd", "FILE:///etc/passwd", "http://127.0.0.1/x.png", "https://example.com/x.png",
    "//example.com/x.png", "/etc/passwd", "../secret.png", "sub/../../secret.png", "%2e%2e/secret.png",
    "C:\\Windows\\win.ini", "c:/windows/win.ini", "\\\\server\\share\\x.png", "sub\\..\\..\\x.png",
    "ftp://example.com/x", "javascript:alert(1)", "missing.png", "", "   ", "img/\x00.png",
])
def test_link_resolution_refuses(uri: str, tmp_path: Path) -> None:
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "ok.png").write_bytes(b"x")
    assert cr.resolve_link(uri, tmp_path.resolve()) is None
    assert cr.make_link_callback(tmp_path)(uri, None) == cr.REFUSED_RESOURCE


def test_link_resolution_allows_data_and_files_inside(tmp_path: Path) -> None:
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "ok.png").write_bytes(b"x")
    root = tmp_path.resolve()
    inside = str(root / "img" / "ok.png")
    assert cr.resolve_link("data:image/png;base64,AAAA", root) == "data:image/png;base64,AAAA"
    assert cr.resolve_link("data:image/png;base64,AAAA", None) == "data:image/png;base64,AAAA"
    assert cr.resolve_link("img/ok.png", root) == inside
    assert cr.resolve_link("img/../img/ok.png", root) == inside
    assert cr.resolve_link("img/ok.png", None) is None
    assert cr.resolve_link(b"img/ok.png", root) is None


def test_resource_policy_alone_blocks_fetches(http_trap: tuple[str, list[str]], tmp_path: Path) -> None:
    """The second gate: even with no link_callback at all, the render reaches nothing."""
    trap, requests = http_trap
    (tmp_path / "outside.png").write_bytes(png_bytes())
    html = (f'<html><head><link rel="stylesheet" href="{trap}/a.css"><style>@import url({trap}/b.css);'
            f'body {{ background-image: url({trap}/c.png) }}</style></head><body><p>x</p>'
            f'<img src="{trap}/d.png"><img src="{tmp_path}/outside.png"></body></html>')
    out = io.BytesIO()
    pisa.CreatePDF(html, dest=out, resource_policy=cr.certificate_resource_policy(tmp_path / "assets"))
    assert requests == []
    assert image_count(out.getvalue()) == 0


# --------------------------------------------------------------------------- preview, codes


needs_pdftoppm = pytest.mark.skipif(shutil.which("pdftoppm") is None, reason="poppler-utils is not installed")


@needs_pdftoppm
def test_preview_png_of_the_default_certificate() -> None:
    png = cr.render_preview_png(render(logo=make_logo()), dpi=100)
    image = Image.open(io.BytesIO(png))
    assert image.format == "PNG"
    assert image.width > image.height  # landscape
    assert (image.width, image.height) == (1170, 827)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "certificate.png").write_bytes(png)


def test_preview_without_pdftoppm_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cr.shutil, "which", lambda _name: None)
    with pytest.raises(cr.PreviewUnavailable, match="poppler-utils"):
        cr.render_preview_png(b"%PDF-1.4")


@needs_pdftoppm
def test_preview_of_a_broken_pdf_is_a_clear_error() -> None:
    with pytest.raises(cr.PreviewUnavailable, match="pdftoppm failed"):
        cr.render_preview_png(b"this is not a pdf")


def test_verification_codes_are_long_unambiguous_and_unique() -> None:
    codes = [cr.new_verification_code() for _ in range(2000)]
    assert len(set(codes)) == len(codes)
    assert all(len(code) == 20 and set(code) <= set(cr.CODE_ALPHABET) for code in codes)
    assert not set("ILOU") & set("".join(codes))


def test_checksum_is_sha256_hex() -> None:
    assert cr.checksum(b"%PDF") == hashlib.sha256(b"%PDF").hexdigest()
    assert len(cr.checksum(b"")) == 64
