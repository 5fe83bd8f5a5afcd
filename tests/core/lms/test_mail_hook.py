"""The sending hook of jobs taken from IOMAD's queue: its fixed template renders without the
template engine exactly as the engine renders it, and leaves to the engine what it cannot."""
from __future__ import annotations

from types import SimpleNamespace

from core.lms.mail_hook import BODY_HTML, BODY_TEXT, SUBJECT, LmsMail
from core.rendering import MAX_VALUE, CompiledTemplate, RenderError


def _hook(company_id: int, subject: str = SUBJECT) -> LmsMail:
    return LmsMail(SimpleNamespace(company_id=company_id, subject=subject, body_text=BODY_TEXT,
                                   body_html=BODY_HTML))


def test_the_fixed_template_renders_as_the_engine_does(company):
    hook, engine = _hook(company.id), CompiledTemplate(SUBJECT, BODY_TEXT, BODY_HTML)
    values = ["Welcome Ann", "  a & b <x> \"q\" 'y'  ", "line\r\none\nNUL\x00end\r\n", "{{ lms_text }} {% if 1 %}",
              "王 李 Łódź ễ مرحبا", "", "\ttab\u2028sep\n", "x" * MAX_VALUE]
    datas = [{"lms_row": i, "lms_subject": v, "lms_text": values[-1 - i],
              "lms_html": f"<p>{v[:50]}</p>" if i % 2 else v}
             for i, v in enumerate(values)]
    rendered = engine.render_many(datas)
    for data, slow in zip(datas, rendered, strict=True):
        fast = hook.render(data)
        assert fast is not None, data["lms_row"]
        assert not isinstance(slow, RenderError) and slow is not None
        assert (fast.subject, fast.text, fast.html) == (slow.subject, slow.text, slow.html), data["lms_row"]


def test_what_the_hook_cannot_render_is_left_to_the_engine(company):
    hook = _hook(company.id)
    good = {"lms_subject": "s", "lms_text": "t", "lms_html": "h"}
    assert hook.render(good) is not None
    for data in (None, [], {"lms_subject": "s", "lms_text": "t"}, {**good, "lms_text": 5},
                 {**good, "lms_html": None}, {**good, "lms_subject": "s" * (MAX_VALUE + 1)}):
        assert hook.render(data) is None, data
    assert _hook(company.id, subject="{{ lms_subject }}!").render(good) is None  # not the fixed template
