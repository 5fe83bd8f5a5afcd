"""Planned certificates: the same page as the full layout, pixel for pixel, from one layout per template."""
from __future__ import annotations

import base64
import io
import shutil

import pytest
from PIL import Image, ImageChops

from core import certificate_layout as cl
from core import certificate_render as cr
from tests.support.certificates import needs_fonts_for, pdf_text

needs_poppler = pytest.mark.skipif(shutil.which("pdftoppm") is None or shutil.which("pdftotext") is None,
                                   reason="poppler-utils (pdftoppm, pdftotext) is not installed")

CODE = "TESTCODE0123456789AB"
LOGO = base64.b64decode(  # a 2x2 PNG
    "iVBORw0KGgoAAAANSUhEUgAAAAIAAAACCAIAAAD91JpzAAAAFklEQVR4nGNgYGD4z8DAwMDAwMDAAAANBAEAb2l9NQAAAABJRU5ErkJggg==")

PEOPLE = [
    {"learner_name": "Ann Lee", "course_name": "Fire Safety", "completion_date": "2026-11-22", "grade": "94%",
     "expiry_date": "2028-11-22", "issuer": "Acme Learning Ltd"},
    {"learner_name": "王小明", "course_name": "Fire Safety", "completion_date": "2026-01-05"},
    {"learner_name": "Łukasz Żółć-Świątek", "course_name": "Охрана труда", "completion_date": "2026-03-01",
     "grade": "Pass", "issuer": "Acme"},
    {"learner_name": "Nguyễn Thị Ánh Hằng", "course_name": "Fire Safety", "completion_date": "2026-12-31",
     "expiry_date": "2027-01-01"},
    {"learner_name": "محمد عبد الله", "course_name": "السلامة من الحرائق", "completion_date": "2026-06-15"},
    {"learner_name": "Maximilian Alexander Christopher Montgomery-Fitzwilliam", "course_name": "Fire Safety",
     "completion_date": "2026-06-15", "issuer": "Acme"},
]


@pytest.fixture(autouse=True)
def fresh_plans():
    cl.planner.clear()
    yield
    cl.planner.clear()


def render(fields: dict, *, planned: bool, html: str = cr.DEFAULT_TEMPLATE_HTML, css: str = cr.DEFAULT_TEMPLATE_CSS,
           logo: bytes | None = LOGO) -> bytes:
    return cr.render_certificate_pdf(html, css, fields, logo=logo, verify_url=f"https://lms.example.com/verify/{CODE}",
                                     code=CODE, planned=planned)


def raster(pdf: bytes) -> Image.Image:
    return Image.open(io.BytesIO(cr.render_preview_png(pdf, dpi=72))).convert("L")


def assert_same_page(planned: bytes, full: bytes) -> None:
    """The same pixels, but where the QR code is: an image scaled by the rasteriser in the full
    layout, the same modules drawn as squares in the planned one (at most a QR-sized patch)."""
    diff = ImageChops.difference(raster(planned), raster(full)).point(lambda p: 255 if p > 64 else 0)
    box = diff.getbbox()
    if box is not None:
        assert box[2] - box[0] <= 90 and box[3] - box[1] <= 90, f"the pages differ at {box}"


def plans() -> list:
    return list(cl.planner._plans.values())


@needs_poppler
def test_planned_certificates_are_the_full_layout_for_every_learner() -> None:
    needs_fonts_for("".join(p["learner_name"] + p["course_name"] for p in PEOPLE))
    for person in PEOPLE:
        assert_same_page(render(person, planned=True), render(person, planned=False))
    assert plans() and all(isinstance(plan, cl.Plan) for plan in plans())


@needs_poppler
def test_a_planned_certificate_reads_back_in_every_script() -> None:
    needs_fonts_for("".join(p["learner_name"] for p in PEOPLE))
    for person in PEOPLE:
        lines = pdf_text(render(person, planned=True)).splitlines()
        assert person["learner_name"] in lines and person["course_name"] in lines
        assert CODE in lines and f"https://lms.example.com/verify/{CODE}" in lines


def test_one_layout_serves_every_learner_of_a_shape(monkeypatch: pytest.MonkeyPatch) -> None:
    """Learners whose page has the same shape share one plan (the layout is done once)."""
    calls = []
    real = cr.html_to_pdf

    def counting(html, **kwargs):
        calls.append(1)
        return real(html, **kwargs)

    monkeypatch.setattr(cr, "html_to_pdf", counting)
    for number in range(5):
        render({"learner_name": f"Learner {number}", "course_name": "Fire Safety",
                "completion_date": "2026-01-01", "grade": "90%"}, planned=True)
    assert len(plans()) == 1
    assert len(calls) <= 1 + cl.PROBE_TRIES + 1  # the probes of one plan, nothing per learner


@needs_poppler
def test_a_template_whose_page_moves_with_the_values_is_laid_out_in_full() -> None:
    html = ('<html><body><p style="text-align: center">Dear {{ learner_name }}, well done.</p>'
            '<img src="{{ qr_src }}" width="80" height="80"></body></html>')
    person = {"learner_name": "Ann Lee", "course_name": "Fire Safety"}
    planned = render(person, planned=True, html=html, css="")
    assert plans() == [None]  # text before the value moves with it: no plan
    assert "Dear Ann Lee, well done." in pdf_text(planned)
    assert_same_page(planned, render(person, planned=False, html=html, css=""))


@needs_poppler
def test_a_value_the_plan_cannot_hold_gets_the_full_layout() -> None:
    """Folded spaces and a value too wide for the probe go the full way; the page is still right."""
    for name in ("Ann  Lee", "W" * 80):
        person = {"learner_name": name, "course_name": "Fire Safety", "completion_date": "2026-01-01"}
        assert_same_page(render(person, planned=True), render(person, planned=False))


def test_escaping_and_values_outside_the_text() -> None:
    """A value in an attribute is put back as text (and the page is laid out in full); markup in a
    value stays text."""
    sk = cl.skeleton(*cr.render_marked_certificate_html(
        '<body><p title="{{ learner_name }}">{{ learner_name }}</p><img src="{{ qr_src }}"></body>', "",
        {"learner_name": "<b>Ann</b>", "qr_src": "", "logo_src": ""}, {"learner_name", "qr_src"}))
    assert sk.fields == ("learner_name",) and sk.qr and not sk.plannable
    assert 'title="&lt;b&gt;Ann&lt;/b&gt;"' in sk.html and "<b>" not in sk.html
    sk = cl.skeleton(*cr.render_marked_certificate_html(
        '<body><p>{{ learner_name }}</p><img src="{{ qr_src }}"></body>', "",
        {"learner_name": "<b>Ann</b>", "qr_src": ""}, {"learner_name", "qr_src"}))
    assert sk.plannable


@needs_poppler
def test_a_plan_carries_nothing_of_the_learner_it_was_made_for() -> None:
    """A plan is shared by every learner (and company) with the template: it is laid out from
    probes, so the next certificate shows nothing of the first learner's."""
    render({"learner_name": "Zebedee Quartermaine", "course_name": "Secret Course", "grade": "12%",
            "completion_date": "2026-01-05"}, planned=True)
    text = pdf_text(render({"learner_name": "Ann Lee", "course_name": "Fire Safety", "grade": "99%",
                            "completion_date": "2026-01-05"}, planned=True))
    assert len(plans()) == 1
    assert "Ann Lee" in text and "Zebedee" not in text and "Secret" not in text and "12%" not in text
