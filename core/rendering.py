"""Rendering subjects and bodies from templates with per-recipient data.

Jinja2's sandbox: templates come from company users and cannot reach
Python internals. HTML bodies are autoescaped; subjects are single-line
(CR, LF and NUL become spaces) so no value can inject a header.

The sandbox is bounded too (``BoundedSandbox``, shared with certificate
templates): arithmetic, repetition, concatenation, string formatting,
padding and ``range`` are intercepted with limits, nothing is folded at
compile time, every loop counts towards a per-render iteration budget,
output and source sizes are capped, and a render has a time budget. A
render error names the template line and the undefined name or the
exception type, never a value of the recipient's data.
"""
from __future__ import annotations

import re
import time
import traceback
from contextvars import ContextVar
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from jinja2 import TemplateError, Undefined, UndefinedError, nodes
from jinja2.filters import do_center, do_format, do_indent, do_join, do_replace, do_wordwrap
from jinja2.sandbox import SandboxedEnvironment, SecurityError
from jinja2.utils import missing, pass_environment, pass_eval_context

#: longest string or list one expression may build (characters / items)
MAX_VALUE = 100_000
#: largest integer an expression may build (bits)
MAX_INT_BITS = 4096
#: largest ``range`` (Jinja's own limit is 100 000)
MAX_RANGE = 10_000
#: loop iterations per render, all loops together
MAX_LOOP_ITERATIONS = 100_000
#: characters of one rendered part
MAX_OUTPUT = 2_000_000
#: characters of one template part's source
MAX_SOURCE = 256_000
#: seconds one render may take (previews and sample renders use a shorter one)
RENDER_BUDGET_S = 10.0
PREVIEW_BUDGET_S = 2.0
_WIDE = re.compile(r"\d{6,}")  # a width or precision of a million or more in a format string

_budget: ContextVar[list | None] = ContextVar("render_budget", default=None)
_HEADER_BREAKS = re.compile(r"[\r\n\x00]+")


class TemplateLimit(SecurityError):
    """A template went over one of the limits; the message is a fixed phrase."""


def _tick(steps: int = 1) -> None:
    """Count loop iterations and watch the clock for the render in progress."""
    budget = _budget.get()
    if budget is None:
        return
    budget[0] += steps
    if budget[0] > MAX_LOOP_ITERATIONS:
        raise TemplateLimit(f"the template loops more than {MAX_LOOP_ITERATIONS} times")
    if time.monotonic() > budget[1]:
        raise TemplateLimit("the template takes too long to render")


def _size(value: Any) -> int:
    if isinstance(value, str):
        return len(value)
    if isinstance(value, (list, tuple)):
        return sum(len(v) if isinstance(v, str) else 1 for v in value)
    return 0


def _check_value(value: Any) -> Any:
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > MAX_INT_BITS:
        raise TemplateLimit("a number in the template is too large")
    if isinstance(value, (str, list, tuple)) and _size(value) > MAX_VALUE:
        raise TemplateLimit("a value in the template is too large")
    return value


def _check_width(*numbers: Any) -> None:
    for number in numbers:
        if isinstance(number, int) and not isinstance(number, bool) and abs(number) > MAX_VALUE:
            raise TemplateLimit("a width in the template is too large")


def _check_format(fmt: Any) -> None:
    if isinstance(fmt, str) and _WIDE.search(fmt):
        raise TemplateLimit("a width in a format string is too large")


def _bounded_range(*args: int) -> range:
    found = range(*args)  # lazy: only its length is looked at before the check
    if len(found) > MAX_RANGE:
        raise TemplateLimit(f"range is limited to {MAX_RANGE} items")
    return found


def _bounded_loop(iterable: Any):
    """Wraps every ``{% for %}`` iterable: each item counts towards the render's budget."""
    for item in iterable:
        _tick()
        yield item


def _join(eval_ctx, value, d="", attribute=None):
    items = list(value)
    _tick(len(items))
    if sum(len(str(v)) for v in items[:MAX_VALUE + 1]) + len(d) * len(items) > MAX_OUTPUT:
        raise TemplateLimit("a joined value in the template is too large")
    return do_join(eval_ctx, items, d, attribute)


def _replace(eval_ctx, s, old, new, count=None):
    text = str(s)
    hits = (len(text) + 1 if old == "" else text.count(str(old))) if count is None else count
    if len(text) + hits * len(str(new)) > MAX_VALUE * 10:
        raise TemplateLimit("a replaced value in the template is too large")
    return do_replace(eval_ctx, s, old, new, count)


def _center(value, width=80):
    _check_width(width)
    return do_center(value, width)


def _indent(s, width=4, first=False, blank=False):
    _check_width(width if isinstance(width, int) else len(str(width)))
    return do_indent(s, width, first, blank)


def _wordwrap(environment, s, width=79, break_long_words=True, wrapstring=None, break_on_hyphens=True):
    _check_width(width)
    return do_wordwrap(environment, s, width, break_long_words, wrapstring, break_on_hyphens)


def _format(value, *args, **kwargs):
    _check_format(value)
    return do_format(value, *args, **kwargs)


_join = pass_eval_context(_join)
_replace = pass_eval_context(_replace)
_wordwrap = pass_environment(_wordwrap)

_STR_WIDTH_METHODS = frozenset({"center", "ljust", "rjust", "zfill", "expandtabs"})


class MissingValue(UndefinedError):
    """An undefined name or a missing attribute/key; ``name`` is what was looked up."""

    def __init__(self, name: str | None, attribute: bool):
        super().__init__("undefined")
        self.name = name
        self.attribute = attribute


class RecordingUndefined(Undefined):
    """Renders as empty like Jinja's default; a use that fails raises ``MissingValue``."""

    __slots__ = ()

    def _fail_with_undefined_error(self, *args, **kwargs):
        raise MissingValue(self._undefined_name if isinstance(self._undefined_name, str) else None,
                           self._undefined_obj is not missing)

    __add__ = __radd__ = __sub__ = __rsub__ = _fail_with_undefined_error
    __mul__ = __rmul__ = __div__ = __rdiv__ = _fail_with_undefined_error
    __truediv__ = __rtruediv__ = __floordiv__ = __rfloordiv__ = _fail_with_undefined_error
    __mod__ = __rmod__ = __pos__ = __neg__ = _fail_with_undefined_error
    __call__ = __getitem__ = __lt__ = __le__ = __gt__ = __ge__ = _fail_with_undefined_error
    __int__ = __float__ = __complex__ = __pow__ = __rpow__ = _fail_with_undefined_error

    def __getattr__(self, name):
        if name[:2] == "__":
            raise AttributeError(name)
        return self._fail_with_undefined_error()


class BoundedSandbox(SandboxedEnvironment):
    """Jinja2's sandbox with limits on what one template may compute."""

    intercepted_binops = frozenset({"*", "**", "+", "-", "/", "//", "%"})
    intercepted_unops = frozenset({"-", "+"})

    def __init__(self, **options: Any) -> None:
        # optimized=False: nothing is folded at compile time (``9**(9**7)`` is a render-time error)
        super().__init__(optimized=False, undefined=RecordingUndefined, **options)
        self.globals["range"] = _bounded_range
        self.filters.update(join=_join, replace=_replace, center=_center, indent=_indent, wordwrap=_wordwrap,
                            format=_format)
        self.filters["bounded_loop"] = _bounded_loop

    def _parse(self, source, name, filename):
        if len(source) > MAX_SOURCE:
            raise TemplateLimit(f"the template is longer than {MAX_SOURCE} characters")
        tree = super()._parse(source, name, filename)
        for loop in tree.find_all(nodes.For):  # every loop's items pass the iteration budget
            loop.iter = nodes.Filter(loop.iter, "bounded_loop", [], [], None, None, lineno=loop.lineno)
        return tree

    def call_binop(self, context, operator, left, right):
        _tick(0)
        if operator == "**":
            if isinstance(right, (int, float)) and (right > 64 or (
                    isinstance(left, int) and left.bit_length() * max(right, 0) > MAX_INT_BITS)):
                raise TemplateLimit("an exponent in the template is too large")
        elif operator == "*":
            for seq, times in ((left, right), (right, left)):
                if isinstance(seq, (str, list, tuple)) and isinstance(times, int) and _size(seq) * times > MAX_VALUE:
                    raise TemplateLimit("a value in the template is too large")
            if isinstance(left, int) and isinstance(right, int) and \
                    left.bit_length() + right.bit_length() > MAX_INT_BITS:
                raise TemplateLimit("a number in the template is too large")
        elif operator == "+":
            if isinstance(left, (str, list, tuple)) and isinstance(right, (str, list, tuple)) \
                    and _size(left) + _size(right) > MAX_VALUE:
                raise TemplateLimit("a value in the template is too large")
        elif operator == "%" and isinstance(left, str):
            _check_format(left)
        return _check_value(super().call_binop(context, operator, left, right))

    def call(__self, __context, __obj, *args, **kwargs):  # noqa: N805 - Jinja's own signature
        _tick(0)
        name = getattr(__obj, "__name__", "")
        # the sandbox hands str.format out wrapped (functools.wraps keeps __wrapped__)
        owner = getattr(__obj, "__self__", None)
        if owner is None:
            owner = getattr(getattr(__obj, "__wrapped__", None), "__self__", None)
        if isinstance(owner, str):
            if name in _STR_WIDTH_METHODS:
                _check_width(*args, *kwargs.values())
            elif name in ("format", "format_map"):
                _check_format(owner)
            elif name == "replace" and len(args) >= 2:
                hits = len(owner) + 1 if args[0] == "" else owner.count(str(args[0]))
                if len(owner) + hits * len(str(args[1])) > MAX_VALUE * 10:
                    raise TemplateLimit("a replaced value in the template is too large")
            elif name == "join" and args:
                items = list(args[0])
                _tick(len(items))
                if sum(len(str(v)) for v in items[:MAX_VALUE + 1]) + len(owner) * len(items) > MAX_OUTPUT:
                    raise TemplateLimit("a joined value in the template is too large")
                args = (items, *args[1:])
        return _check_value(super().call(__context, __obj, *args, **kwargs))


def render_bounded(template, context: dict, budget_s: float = RENDER_BUDGET_S) -> str:
    """Render with the iteration and time budget, stopping once the output is over ``MAX_OUTPUT``."""
    token = _budget.set([0, time.monotonic() + budget_s])
    try:
        parts, total = [], 0
        for piece in template.generate(context):
            total += len(piece)
            if total > MAX_OUTPUT:
                raise TemplateLimit(f"the rendered text is longer than {MAX_OUTPUT} characters")
            parts.append(piece)
        return "".join(parts)
    finally:
        _budget.reset(token)


def _template_line(exc: BaseException) -> int | None:
    """The template line an exception was raised on (Jinja rewrites tracebacks to point there)."""
    line = None
    for frame in traceback.extract_tb(exc.__traceback__):
        if frame.filename == "<template>" or frame.filename.endswith(".html") and "jinja2" not in frame.filename:
            line = frame.lineno
    return line


def describe_error(exc: BaseException, source: str = "") -> str:
    """What went wrong, without a data value: the line, the undefined name (when the
    template itself spells it) or the exception type, or the limit's fixed phrase."""
    line = getattr(exc, "lineno", None) or _template_line(exc)
    where = f"line {line}: " if line else ""
    if isinstance(exc, MissingValue):
        if exc.name and re.search(r"(?<![\w])" + re.escape(exc.name) + r"(?![\w])", source):
            what = f"'{exc.name}' is undefined" if not exc.attribute else f"no attribute or key '{exc.name}'"
        else:
            what = "a missing attribute or key (UndefinedError)"
        return where + what
    if isinstance(exc, TemplateLimit):
        return where + str(exc)
    if isinstance(exc, TemplateError) and type(exc).__name__ == "TemplateSyntaxError":
        return where + f"syntax error: {exc.message}" if getattr(exc, "message", None) else where + "syntax error"
    if isinstance(exc, SecurityError):
        return where + "not allowed in a template (SecurityError)"
    return where + type(exc).__name__


_text_env = BoundedSandbox(autoescape=False, keep_trailing_newline=True)
_html_env = BoundedSandbox(autoescape=True, keep_trailing_newline=True)


class RenderError(ValueError):
    """A template does not compile or cannot render; ``part`` names which one."""

    def __init__(self, part: str, message: str):
        super().__init__(f"{part}: {message}")
        self.part = part


def single_line(value: str) -> str:
    """Collapse CR/LF/NUL runs to a space: safe for a header value."""
    return _HEADER_BREAKS.sub(" ", value).strip()


def has_header_breaks(value: str) -> bool:
    return bool(_HEADER_BREAKS.search(value))


@dataclass
class Rendered:
    subject: str
    text: str | None
    html: str | None


@lru_cache(maxsize=512)
def _compiled(env, source: str):
    """Compiling is the costly part of rendering; jobs reuse a few templates."""
    return env.from_string(source)


class CompiledTemplate:
    """Subject, text and HTML compiled once, rendered per recipient."""

    def __init__(self, subject: str, text: str | None, html: str | None):
        if not (subject or "").strip():
            raise RenderError("subject", "a subject is required")
        if not (text or html):
            raise RenderError("body", "body_text or body_html is required")
        self._subject = self._compile(_text_env, "subject", subject)
        self._text = self._compile(_text_env, "body_text", text) if text else None
        self._html = self._compile(_html_env, "body_html", html) if html else None

        self._sources = {"subject": subject, "body_text": text or "", "body_html": html or ""}

    @staticmethod
    def _compile(env, part, source):
        try:
            return _compiled(env, source)
        except TemplateError as exc:  # a syntax error's message quotes the template, never data
            raise RenderError(part, f"template error: {describe_error(exc, source)}") from None
        except (RecursionError, MemoryError, ValueError, OverflowError) as exc:
            raise RenderError(part, f"template error: {type(exc).__name__}") from None

    def render(self, data: dict | None, budget_s: float = RENDER_BUDGET_S) -> Rendered:
        """Render for one recipient within ``budget_s``; raises ``RenderError`` (the part,
        the line and the undefined name or exception type: never a data value)."""
        ctx = data if isinstance(data, dict) else {}
        part = "subject"
        try:
            subject = single_line(render_bounded(self._subject, ctx, budget_s))
            part = "body_text"
            text = render_bounded(self._text, ctx, budget_s) if self._text else None
            part = "body_html"
            html = render_bounded(self._html, ctx, budget_s) if self._html else None
        except Exception as exc:  # noqa: BLE001 - whatever a user template raises is a render error
            raise RenderError(part, describe_error(exc, self._sources[part])) from None
        return Rendered(subject, text, html)


# Fast address check for bulk input: RFC 5321 lengths, one @, a dotted domain.
_EMAIL_RE = re.compile(
    r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
    r"@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63}$")


def valid_email(address) -> bool:
    """True for a plausible deliverable address (no display names, no CR/LF)."""
    return isinstance(address, str) and len(address) <= 254 and bool(_EMAIL_RE.match(address)) \
        and len(address.partition("@")[0]) <= 64
