"""Certificate fonts: every learner's name prints, in its own script, and reads back from the PDF."""
from __future__ import annotations

import io
import shutil

import pytest
from PIL import Image, ImageChops

from core import certificate_fonts as cf
from core import certificate_render as cr
from tests.support.certificates import needs_fonts_for, pdf_text

needs_poppler = pytest.mark.skipif(shutil.which("pdftotext") is None or shutil.which("pdftoppm") is None,
                                   reason="poppler-utils (pdftotext, pdftoppm) is not installed")

#: One name per script Moodle sites have learners in.
NAMES = {
    "Chinese": "王小明",
    "Chinese (2)": "李娜",
    "Japanese": "山田 さくら",
    "Korean": "김민준",
    "Cyrillic": "Иван Петров",
    "Polish": "Łukasz Żółć-Świątek",
    "Vietnamese": "Nguyễn Thị Ánh Hằng",
    "Greek": "Γιώργος Παπαδόπουλος",
    "Arabic": "محمد عبد الله",
    "Hebrew": "שרה כהן",
    "Devanagari": "अनीता शर्मा",
    "Thai": "สมชาย ใจดี",
}

CODE = "TESTCODE0123456789AB"


def certificate(name: str, **fields: str) -> bytes:
    return cr.render_certificate_pdf(
        cr.DEFAULT_TEMPLATE_HTML, cr.DEFAULT_TEMPLATE_CSS,
        {"learner_name": name, "course_name": fields.get("course_name", "Fire Safety"),
         "completion_date": "2026-11-22", "issuer": "Acme"},
        logo=None, verify_url=f"https://lms.example.com/verify/{CODE}", code=CODE)


def raster(pdf: bytes) -> Image.Image:
    return Image.open(io.BytesIO(cr.render_preview_png(pdf, dpi=50))).convert("L")


@needs_poppler
@pytest.mark.parametrize("script", list(NAMES))
def test_a_name_in_any_script_reads_back_from_the_certificate(script: str) -> None:
    """The exact characters come back: the fonts carry the glyphs and their Unicode mapping.

    For Arabic, Hebrew, Devanagari and Thai the glyphs drawn are HarfBuzz's (joined forms,
    conjuncts, marks); the span's /ActualText gives a reader the typed characters, and poppler
    puts a right-to-left line back in logical order, which is what is asserted."""
    name = NAMES[script]
    needs_fonts_for(name)
    lines = pdf_text(certificate(name)).splitlines()
    assert name in lines


@needs_poppler
def test_course_and_other_fields_print_in_their_script_too() -> None:
    needs_fonts_for("Охрана труда — 安全培训 — السلامة")
    pdf = certificate("Anna", course_name="Охрана труда — 安全培训 — السلامة")
    assert "Охрана труда — 安全培训 — السلامة" in pdf_text(pdf).splitlines()


@needs_poppler
@pytest.mark.parametrize("first, second", [("王", "李"), ("김", "박"), ("محمد", "أحمد"), ("Ł", "Ś")])
def test_glyphs_are_really_drawn_not_boxes(first: str, second: str) -> None:
    """Two different names make different ink where the name is: a missing glyph would be the
    same empty box (or nothing) for both."""
    blank, one, other = (raster(certificate(name)) for name in (" ", first, second))
    ink_one, ink_other = ImageChops.difference(blank, one).getbbox(), ImageChops.difference(blank, other).getbbox()
    assert ink_one is not None and ink_other is not None, "the name left no ink"
    assert ImageChops.difference(one, other).getbbox() is not None, "both names drew the same shapes"


def test_arabic_letters_are_joined() -> None:
    """HarfBuzz picks the joined forms: the glyphs of محمد are not its letters' isolated glyphs."""
    stack = cf.stack("CertSerif-Bold")
    word = "محمد"
    needs_fonts_for(word)
    glyphs = stack.shape(stack.member_for(ord(word[0])), word, visual=False)
    member = stack.member(stack.member_for(ord(word[0])))
    isolated = {member.char_to_glyph[ord(c)] for c in word}
    drawn = {member.char_to_glyph[ord(g.code)] for g in glyphs}
    assert len(glyphs) == len(word)
    assert not drawn & isolated, "the letters were drawn unjoined"
    assert stack.stringWidth(word, 10) != pytest.approx(sum(stack.stringWidth(c, 10) for c in word))


def test_each_character_takes_the_first_font_that_has_it() -> None:
    stack = cf.stack("CertSans")
    needs_fonts_for("王")
    runs = stack.runs("Anna 王 Łoś")
    assert [run.text for run in runs] == ["Anna ", "王", " Łoś"]
    assert runs[0].member == runs[2].member == 0 and runs[1].member > 0


def test_fonts_are_embedded_as_subsets() -> None:
    """A CJK name embeds the few glyphs it uses, not megabytes of font."""
    needs_fonts_for("王小明 김민준")
    assert len(certificate("王小明 김민준")) < 200_000


def test_without_font_files_certificates_still_render_and_the_gap_is_reported(tmp_path) -> None:
    cf.configure([str(tmp_path)])  # nothing there: only ReportLab's own Vera is left
    try:
        assert "Chinese" in cf.coverage()["CertSans"]
        assert certificate("王小明").startswith(b"%PDF")
    finally:
        cf.configure(None)
    needs_fonts_for("".join(cf.SCRIPT_SAMPLES.values()))
    assert cf.coverage() == {"CertSans": [], "CertSerif": [], "CertMono": []}
