"""Rendering subjects and bodies from templates with per-recipient data.

Jinja2's sandbox: templates come from company users and cannot reach
Python internals. HTML bodies are autoescaped; subjects are single-line
(CR, LF and NUL become spaces) so no value can inject a header. Undefined
is strict: a variable the data lacks is an error naming it, never a blank
(``{{ x|default('') }}`` and ``{% if x is defined %}`` say a variable is
optional).

Bounds, in two layers:

1. ``BoundedSandbox`` (shared with certificate templates) gives precise
   errors early: arithmetic, repetition, ``~`` concatenation, string
   formatting, padding, ``range``, ``batch`` and ``slice`` are checked
   before they build a value, nothing is folded at compile time, every loop
   counts towards a per-render iteration budget, output and source sizes
   are capped, and the clock is read between operations.
2. The hard bound: templates compile and render in a child process
   (``core.bounded``) whose memory the kernel caps (``RENDER_MEMORY_MB``)
   and which is killed when a render outlives its budget, so one C-level
   operation (``str()`` of a huge list, ``lipsum(10**6)``) cannot hold the
   web or worker process. A chunk of recipients is one round trip.

A template in the *plain* subset (output of variables, attribute and item
lookups, ``if``, comparisons, ``~`` and a short list of linear filters and
tests: no loop, call, assignment, macro or arithmetic) renders in-process
when a static bound on its work holds for the recipient's data (see
``_Cost``): each node runs at most once, each is linear in its inputs, so
the work and memory of the whole render are bounded before it starts.
Everything else goes to the child.

A render error names the template line and the undefined name, the limit,
or the exception type; never a value of the recipient's data.
"""
from __future__ import annotations

import io
import itertools
import re
import signal
import threading
import time
import traceback
from collections import OrderedDict
from collections.abc import Callable
from contextlib import contextmanager, nullcontext
from contextvars import ContextVar
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from jinja2 import TemplateError, TemplateSyntaxError, Undefined, UndefinedError, nodes
from jinja2.compiler import CodeGenerator
from jinja2.filters import do_batch, do_center, do_format, do_indent, do_join, do_replace, do_wordwrap, sync_do_slice
from jinja2.runtime import markup_join, str_join
from jinja2.sandbox import SandboxedEnvironment, SecurityError
from jinja2.utils import missing, pass_environment, pass_eval_context
from jinja2.visitor import NodeTransformer
from markupsafe import escape

from core import bounded

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
#: seconds one render may take (previews and sample renders use a shorter one); a chunk
#: of recipients (``render_many``) shares one budget
RENDER_BUDGET_S = 10.0
PREVIEW_BUDGET_S = 2.0
#: seconds a template may take to compile
COMPILE_BUDGET_S = 5.0
#: memory one render may add to the renderer process (MB)
RENDER_MEMORY_MB = 256
_WIDE = re.compile(r"\d{6,}")  # a width or precision of a million or more in a format string

_budget: ContextVar[list | None] = ContextVar("render_budget", default=None)
_HEADER_BREAKS = re.compile(r"[\r\n\x00]+")


class TemplateLimit(SecurityError):
    """A template went over one of the limits; the message is a fixed phrase."""


class TimeLimit(TemplateLimit):
    """A render (or compile) outlived its budget; ``hard`` when a signal or a kill stopped it."""

    def __init__(self, message: str, hard: bool = False):
        super().__init__(message)
        self.hard = hard


def time_words(budget_s: float, what: str = "render") -> str:
    return f"the template takes longer than {budget_s:g} s to {what}"


def memory_words() -> str:
    return f"the template needs more than {RENDER_MEMORY_MB} MB of memory to render"


def _tick(steps: int = 1) -> None:
    """Count loop iterations and watch the clock for the render in progress."""
    budget = _budget.get()
    if budget is None:
        return
    budget[0] += steps
    if budget[0] > MAX_LOOP_ITERATIONS:
        raise TemplateLimit(f"the template loops more than {MAX_LOOP_ITERATIONS} times")
    if time.monotonic() > budget[1]:
        raise TimeLimit(time_words(budget[2]))


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


def _count_arg(value: Any, what: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 < value <= MAX_VALUE:
        raise TemplateLimit(f"{what} takes a whole number from 1 to {MAX_VALUE}")


def _batch(value, linecount, fill_with=None):
    _count_arg(linecount, "batch")
    return do_batch(value, linecount, fill_with)


def _slice(value, slices, fill_with=None):
    _count_arg(slices, "slice")
    return sync_do_slice(value, slices, fill_with)


def _concat(eval_ctx, items):
    """``a ~ b``: the parts' sizes are checked before they are joined."""
    _tick(0)
    parts = [v if isinstance(v, str) else str(v) for v in items]
    if sum(len(p) for p in parts) > MAX_VALUE:
        raise TemplateLimit("a value in the template is too large")
    return markup_join(parts) if eval_ctx.autoescape else str_join(parts)


_join = pass_eval_context(_join)
_replace = pass_eval_context(_replace)
_wordwrap = pass_environment(_wordwrap)
_concat = pass_eval_context(_concat)

_STR_WIDTH_METHODS = frozenset({"center", "ljust", "rjust", "zfill", "expandtabs"})
_CONCAT = "bounded_concat"
_LOOP = "bounded_loop"


class MissingValue(UndefinedError):
    """An undefined name or a missing attribute/key; ``name`` is what was looked up."""

    def __init__(self, name: str | None, attribute: bool):
        super().__init__("undefined")
        self.name = name
        self.attribute = attribute


class StrictUndefined(Undefined):
    """Any use but ``is defined`` and ``|default`` raises ``MissingValue``: printing, testing
    (``{% if x %}``), comparing, iterating and measuring alike."""

    __slots__ = ()

    def _fail_with_undefined_error(self, *args, **kwargs):
        raise MissingValue(self._undefined_name if isinstance(self._undefined_name, str) else None,
                           self._undefined_obj is not missing)

    __add__ = __radd__ = __sub__ = __rsub__ = _fail_with_undefined_error
    __mul__ = __rmul__ = __div__ = __rdiv__ = _fail_with_undefined_error
    __truediv__ = __rtruediv__ = __floordiv__ = __rfloordiv__ = _fail_with_undefined_error
    __mod__ = __rmod__ = __pos__ = __neg__ = _fail_with_undefined_error
    __call__ = __getitem__ = __lt__ = __le__ = __gt__ = __ge__ = _fail_with_undefined_error
    __int__ = __float__ = __complex__ = __pow__ = __rpow__ = __index__ = _fail_with_undefined_error
    __iter__ = __str__ = __len__ = __eq__ = __ne__ = __bool__ = __hash__ = __contains__ = \
        _fail_with_undefined_error

    def __getattr__(self, name):
        if name[:2] == "__":
            raise AttributeError(name)
        return self._fail_with_undefined_error()


#: the old name (it rendered missing values as blanks; now nothing does)
RecordingUndefined = StrictUndefined


class _Bound(NodeTransformer):
    """Rewrites a parsed template: loops pass their items through the iteration budget,
    ``~`` goes through the size-checked concatenation."""

    def visit_For(self, node: nodes.For) -> nodes.Node:
        loop = self.generic_visit(node)  # the same For, its children visited
        assert isinstance(loop, nodes.For)
        loop.iter = nodes.Filter(loop.iter, _LOOP, [], [], None, None, lineno=loop.lineno)
        return loop

    def visit_Concat(self, node: nodes.Concat) -> nodes.Node:
        concat = self.generic_visit(node)  # the same Concat, its children visited
        assert isinstance(concat, nodes.Concat)
        return nodes.Filter(nodes.List(concat.nodes, lineno=concat.lineno), _CONCAT, [], [], None, None,
                            lineno=concat.lineno)


class BoundedSandbox(SandboxedEnvironment):
    """Jinja2's sandbox with limits on what one template may compute."""

    intercepted_binops = frozenset({"*", "**", "+", "-", "/", "//", "%"})
    intercepted_unops = frozenset({"-", "+"})

    def __init__(self, **options: Any) -> None:
        # optimized=False: nothing is folded at compile time (``9**(9**7)`` is a render-time error)
        super().__init__(optimized=False, undefined=StrictUndefined, **options)
        self.globals["range"] = _bounded_range
        self.filters.update(join=_join, replace=_replace, center=_center, indent=_indent, wordwrap=_wordwrap,
                            format=_format, batch=_batch, slice=_slice)
        self.filters[_LOOP] = _bounded_loop
        self.filters[_CONCAT] = _concat

    def _parse(self, source, name, filename):
        if len(source) > MAX_SOURCE:
            raise TemplateLimit(f"the template is longer than {MAX_SOURCE} characters")
        return _Bound().visit(super()._parse(source, name, filename))

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


def _render_until(template, context: dict, deadline: float, budget_s: float) -> str:
    token = _budget.set([0, deadline, budget_s])
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


def render_bounded(template, context: dict, budget_s: float | None = None) -> str:
    """Render a compiled template *in this process* with the iteration and time budget,
    stopping once the output is over ``MAX_OUTPUT``. The budget is read between operations:
    untrusted templates go through ``CompiledTemplate`` or ``render_document``, which add
    the hard bound."""
    budget_s = RENDER_BUDGET_S if budget_s is None else budget_s
    return _render_until(template, context, time.monotonic() + budget_s, budget_s)


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
    if isinstance(exc, MemoryError):
        return where + memory_words()
    if isinstance(exc, TemplateError) and type(exc).__name__ == "TemplateSyntaxError":
        return where + f"syntax error: {exc.message}" if getattr(exc, "message", None) else where + "syntax error"
    if isinstance(exc, SecurityError):
        return where + "not allowed in a template (SecurityError)"
    return where + type(exc).__name__


#: the environments a part renders in: mail text (and subjects), mail HTML, and documents
#: (certificates: autoescaped HTML without the trailing newline)
ENVIRONMENTS = {
    "text": BoundedSandbox(autoescape=False, keep_trailing_newline=True),
    "html": BoundedSandbox(autoescape=True, keep_trailing_newline=True),
    "document": BoundedSandbox(autoescape=True),
}


class RenderError(ValueError):
    """A template does not compile or cannot render; ``part`` names which one."""

    def __init__(self, part: str, message: str):
        super().__init__(f"{part}: {message}")
        self.part = part
        self.message = message


class CompileError(RenderError):
    """The template itself is wrong (syntax, size, or too slow or large to compile)."""


class RendererUnavailable(RuntimeError):
    """The renderer process could not be started: nothing is wrong with the template."""


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


# ---------------------------------------------------------------------------- in-process engine
# (what the renderer process runs, and what a plain template runs here)

@lru_cache(maxsize=512)
def _compiled(env, source: str):
    """A template compiled the plain way (no analysis)."""
    return env.from_string(source)


class _RecordingGenerator(CodeGenerator):
    """Jinja's code generator, noting the names the template looks up in its context as it
    goes (what ``jinja2.meta.find_undeclared_variables`` finds, without a second pass)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.undeclared: set[str] = set()

    def enter_frame(self, frame) -> None:
        super().enter_frame(frame)
        for _, (action, param) in frame.symbols.loads.items():
            if action == "resolve" and param not in self.environment.globals:
                self.undeclared.add(param)


@dataclass(frozen=True)
class _Analysed:
    template: Any
    variables: frozenset
    optional: frozenset
    cost: tuple[int, int] | None  # the plain subset's work bound (``_Cost``), None when not plain


@lru_cache(maxsize=512)
def _analysed(kind: str, source: str) -> _Analysed:
    """Parse once, measure, generate the code once (recording names), compile: a template and what
    it uses. Compiling is the costly part of rendering; jobs reuse a few templates."""
    env = ENVIRONMENTS[kind]
    tree = env.parse(source)
    cost = _Cost(kind != "text").of(tree)
    optional = _guarded_names(tree)
    source_code = io.StringIO()
    generator = _RecordingGenerator(env, None, None, source_code, False, env.optimized)
    try:
        generator.visit(tree)
    except TemplateSyntaxError:
        env.handle_exception(source=source)
    code = env._compile(source_code.getvalue(), "<template>")
    template = env.template_class.from_code(env, code, env.make_globals(None), None)
    used = frozenset(generator.undeclared)
    return _Analysed(template, used, frozenset(optional & used), cost)


class _Failed(Exception):
    """One part of one recipient failed; ``message`` is ``describe_error``'s."""

    def __init__(self, part: str, message: str, late: bool = False, fatal: bool = False):
        super().__init__(message)
        self.part, self.message, self.late, self.fatal = part, message, late, fatal


class _Marked(str):
    """A value printed as a mark (``\\x00<nonce>:<n>\\x00``) that the book resolves to its name and
    escaped text; what a template builds from it is plain text (``render_marked_document``)."""

    _name: str
    _book: list
    _nonce: str

    def __new__(cls, value: str, name: str, book: list, nonce: str) -> _Marked:
        self = super().__new__(cls, value)
        self._name, self._book, self._nonce = name, book, nonce
        return self

    def __html__(self) -> str:
        self._book.append((self._name, str(escape(str(self)))))
        return f"\x00{self._nonce}:{len(self._book) - 1}\x00"


def render_parts(parts: tuple, data: Any, deadline: float, budget_s: float, marks: tuple | None = None) -> list:
    """Render each ``(part, kind, source)`` for ``data`` in this process; raises ``_Failed``. With
    ``marks`` (names, nonce), those string values print as marks and the book comes last."""
    ctx = data if isinstance(data, dict) else {}
    book: list = []
    if marks:
        names, nonce = marks
        ctx = {k: _Marked(v, k, book, nonce) if k in names and type(v) is str else v for k, v in ctx.items()}
    out: list = []
    for part, kind, source in parts:
        try:
            out.append(_render_until(_analysed(kind, source).template, ctx, deadline, budget_s))
        except TimeLimit as exc:
            raise _Failed(part, describe_error(exc, source), late=True, fatal=exc.hard) from None
        except MemoryError as exc:
            raise _Failed(part, describe_error(exc, source), fatal=True) from None
        except Exception as exc:  # noqa: BLE001 - whatever a user template raises is a render error
            raise _Failed(part, describe_error(exc, source)) from None
    if marks:
        out.append(book)
    return out


def inspect_parts(parts: tuple) -> dict:
    """Compile each part; what the template uses and whether it is plain (``_Cost``).
    Raises ``_Failed`` for a part that does not compile."""
    variables: set[str] = set()
    optional: set[str] = set()
    cost: list[int] | None = [0, 0]
    for part, kind, source in parts:
        try:
            found = _analysed(kind, source)
        except TimeLimit:
            raise
        except TemplateError as exc:  # a syntax error's message quotes the template, never data
            raise _Failed(part, describe_error(exc, source)) from None
        except (RecursionError, MemoryError, ValueError, OverflowError) as exc:
            raise _Failed(part, describe_error(exc, source), fatal=isinstance(exc, MemoryError)) from None
        variables |= found.variables
        optional |= found.optional
        cost = None if cost is None or found.cost is None else [cost[0] + found.cost[0], cost[1] + found.cost[1]]
    return {"variables": sorted(variables), "optional": sorted(optional & variables), "cost": cost}


def _guarded_names(tree: nodes.Template) -> set[str]:
    """Names used with ``|default`` or tested with ``is defined`` / ``is undefined``."""
    found = set()
    for node in tree.find_all((nodes.Filter, nodes.Test)):
        guard = node.name in ("default", "d") if isinstance(node, nodes.Filter) else \
            node.name in ("defined", "undefined")
        if guard and isinstance(node.node, nodes.Name):
            found.add(node.node.name)
    return found


# ---------------------------------------------------------------------------- the plain subset

#: a plain template renders in-process when its work bound for the data is at most this (characters)
FAST_MAX_WORK = 4_000_000
#: deepest expression nesting of a plain template (the analysis and Jinja's compiler recurse)
FAST_MAX_DEPTH = 40
#: most nodes in a plain template
FAST_MAX_NODES = 3_000
#: str() of a value is at most this many times its measured size: a string is itself, and a list or
#: dict is measured at ``_REPR`` times its contents (``_data_size``), which covers its repr's escapes
_STR = 1
#: repr() of a list or dict of JSON data is at most this many times its contents (``\U0010ffff`` for
#: one character, quotes and separators per item)
_REPR = 10
#: filters of the plain subset and the most each can grow its input, on the input's str()
#: (``None``: the result is a scalar or a part of the input)
_PLAIN_FILTERS: dict[str, int | None] = {
    "default": None, "d": None, "first": None, "last": None, "length": None, "count": None, "int": None,
    "float": None, "abs": None, "round": None,
    "string": _STR, "safe": _STR, "trim": _STR, "truncate": _STR,
    "e": 6 * _STR, "escape": 6 * _STR, "forceescape": 6 * _STR,  # &#34; for " (5; 6 for margin)
    "upper": 3 * _STR, "lower": 3 * _STR, "title": 3 * _STR, "capitalize": 3 * _STR,  # 'ﬃ'.upper() == 'FFI'
    "urlencode": 12 * _STR,  # %F0%9F%98%80 for one character
}
_PLAIN_TESTS = frozenset({"defined", "undefined", "none", "boolean", "false", "true", "integer", "float", "number",
                          "string", "mapping", "sequence", "lower", "upper", "eq", "ne", "equalto", "==", "!=",
                          "odd", "even", "sameas"})
_PLAIN_COMPARE = frozenset({"eq", "ne", "lt", "lteq", "gt", "gteq"})


class _NotPlain(Exception):
    pass


class _Cost:
    """The work bound of a template in the plain subset, as ``(per, fixed)``: rendering it
    for data of measured size ``D`` (``_data_size``) builds at most ``per * D + fixed``
    characters in all, and does work linear in that.

    Why this holds: the subset has no loop, macro, call, assignment, include or arithmetic,
    so each node is evaluated at most once per render. Each node's value is a part of the
    data (a name, attribute or item: no copy, at most ``D``), a literal of the source, a
    boolean, or the result of a filter or ``~`` whose size is at most a known factor of its
    inputs' (``_PLAIN_FILTERS``; ``~`` is size-checked before it joins); comparisons and
    tests read their operands once. Output converts each value once (``str``, then escaping
    in HTML). Summing those sizes over the tree bounds both the characters built (memory)
    and the time, whatever the data holds."""

    def __init__(self, html: bool):
        self.out = _STR * (6 if html else 1)  # str() of an output value, then markupsafe's escape
        self.nodes = 0
        self.per = self.fixed = 0

    def of(self, tree: nodes.Template) -> tuple[int, int] | None:
        try:
            self.body(tree.body, 0)
        except (_NotPlain, RecursionError):
            return None
        return self.per, self.fixed

    def _count(self, depth: int) -> None:
        self.nodes += 1
        if self.nodes > FAST_MAX_NODES or depth > FAST_MAX_DEPTH:
            raise _NotPlain()

    def _work(self, size: tuple[int, int], times: int = 1) -> None:
        self.per += size[0] * times
        self.fixed += size[1] * times

    def body(self, body: list, depth: int) -> None:
        for node in body:
            self._count(depth)
            if isinstance(node, nodes.Output):
                for child in node.nodes:
                    if isinstance(child, nodes.TemplateData):
                        self.fixed += len(child.data)
                    else:
                        self._work(self.expr(child, depth + 1), self.out)
            elif isinstance(node, nodes.If):
                self.expr(node.test, depth + 1)
                self.body(node.body, depth + 1)
                for branch in node.elif_:
                    self.expr(branch.test, depth + 1)
                    self.body(branch.body, depth + 1)
                self.body(node.else_, depth + 1)
            else:
                raise _NotPlain()

    def args(self, node, depth: int, names: bool) -> tuple[int, int]:
        """The summed size of a filter's or test's arguments: literals (or names, for ``default``)."""
        if node.dyn_args is not None or node.dyn_kwargs is not None:
            raise _NotPlain()
        total = (0, 0)
        for arg in [*node.args, *(kw.value for kw in node.kwargs)]:
            if not isinstance(arg, nodes.Const) and not (names and isinstance(arg, nodes.Name)):
                raise _NotPlain()
            size = self.expr(arg, depth + 1)
            total = (total[0] + size[0], total[1] + size[1])
        return total

    def expr(self, node: nodes.Node, depth: int) -> tuple[int, int]:
        """The size bound ``(per, fixed)`` of an expression's value; adds the work it does."""
        self._count(depth)
        if isinstance(node, nodes.Const):
            return 0, len(repr(node.value)) + 8
        if isinstance(node, nodes.Name):
            if node.ctx != "load":
                raise _NotPlain()
            return 1, 200  # the value, or a global's repr
        if isinstance(node, nodes.Getattr):
            inner = self.expr(node.node, depth + 1)
            return inner[0], inner[1] + 200  # a part of the value, or a method's repr
        if isinstance(node, nodes.Getitem):
            inner = self.expr(node.node, depth + 1)
            arg = node.arg
            if isinstance(arg, nodes.Slice):
                for bound in (arg.start, arg.stop, arg.step):
                    if bound is not None and not isinstance(bound, nodes.Const):
                        raise _NotPlain()
                self._work(inner)  # a slice copies
            elif not isinstance(arg, nodes.Const):
                raise _NotPlain()
            return inner[0], inner[1] + 200
        if isinstance(node, (nodes.MarkSafe, nodes.MarkSafeIfAutoescape)):
            inner = self.expr(node.expr, depth + 1)
            self._work(inner)
            return inner
        if isinstance(node, nodes.CondExpr):
            self.expr(node.test, depth + 1)
            one = self.expr(node.expr1, depth + 1)
            two = self.expr(node.expr2, depth + 1) if node.expr2 is not None else (0, 0)
            return one[0] + two[0], one[1] + two[1]
        if isinstance(node, (nodes.And, nodes.Or)):
            left, right = self.expr(node.left, depth + 1), self.expr(node.right, depth + 1)
            return left[0] + right[0], left[1] + right[1]
        if isinstance(node, nodes.Not):
            self.expr(node.node, depth + 1)
            return 0, 8
        if isinstance(node, nodes.Compare):
            sizes = [self.expr(node.expr, depth + 1)]
            for operand in node.ops:
                if operand.op not in _PLAIN_COMPARE:
                    raise _NotPlain()
                sizes.append(self.expr(operand.expr, depth + 1))
            for size in sizes:
                self._work(size)
            return 0, 8
        if isinstance(node, nodes.Test):
            if node.name not in _PLAIN_TESTS:
                raise _NotPlain()
            inner = self.expr(node.node, depth + 1)
            self._work(inner)
            self._work(self.args(node, depth, names=True))
            return 0, 8
        if isinstance(node, nodes.Filter):
            return self.filter(node, depth)
        raise _NotPlain()

    def filter(self, node: nodes.Filter, depth: int) -> tuple[int, int]:
        if node.name == _CONCAT and isinstance(node.node, nodes.List) and not node.args and not node.kwargs:
            total = (0, 0)
            for item in node.node.items:
                size = self.expr(item, depth + 1)
                total = (total[0] + size[0], total[1] + size[1])
            value = (total[0] * self.out, total[1] * self.out)
            self._work(value)
            return value
        if node.name not in _PLAIN_FILTERS or node.node is None:
            raise _NotPlain()
        inner = self.expr(node.node, depth + 1)
        args = self.args(node, depth, names=node.name in ("default", "d"))
        self._work(inner)
        factor = _PLAIN_FILTERS[node.name]
        if factor is None:
            value = (inner[0] + args[0], inner[1] + args[1])
        else:
            value = (inner[0] * factor, (inner[1] + args[1]) * factor + args[1])
        self._work(value)
        return value


def _data_size(data: Any, limit: int) -> int | None:
    """The size ``_Cost`` is measured in: a string value counts its characters, a list or dict
    value ``_REPR`` times its contents (so ``str()`` of any value reached by names, attributes and
    items is at most this size), a number its digits; ``None`` when over ``limit`` or when the data
    is not plain JSON."""
    if type(data) is not dict:
        return 0
    if _ALL_STR >= set(map(type, data.values())) and _ALL_STR >= set(map(type, data)):
        # the usual recipient, a flat dict of strings, measured in C
        total = sum(map(len, data.values())) + sum(map(len, data)) + 6 * len(data)
        return total if total <= limit else None
    total = 0
    for key, value in data.items():
        kind = type(value)
        if type(key) is not str:
            return None
        if kind is str:  # the usual recipient: a flat dict of strings
            total += len(key) + len(value) + 6
        elif kind is dict or kind is list:
            inner = _nested_size(value, (limit - total) // _REPR)
            if inner is None:
                return None
            total += len(key) + 4 + _REPR * inner
        else:
            size = _scalar_size(value)
            if size is None:
                return None
            total += len(key) + 4 + size
        if total > limit:
            return None
    return total


_ALL_STR = frozenset({str})


def _nested_size(data: Any, limit: int) -> int | None:
    """Characters of the strings and keys in a list or dict, digits of its numbers, a few per other value."""
    total = 0
    stack = [(data, 0)]
    while stack:
        value, depth = stack.pop()
        kind = type(value)
        if kind is dict and depth < 32:
            total += 2
            for key, item in value.items():
                if type(key) is not str:
                    return None
                total += len(key) + 4
                stack.append((item, depth + 1))
        elif kind is list and depth < 32:
            total += 2 + len(value)
            stack.extend((item, depth + 1) for item in value)
        else:
            size = _scalar_size(value)
            if size is None:
                return None
            total += size
        if total > limit:
            return None
    return total


def _scalar_size(value: Any) -> int | None:
    kind = type(value)
    if kind is str:
        return len(value) + 2
    if value is None or kind is bool or kind is float:
        return 8
    if kind is int:
        return value.bit_length() // 3 + 2
    return None


# ---------------------------------------------------------------------------- the renderer process

_pool = bounded.Pool("core.render_child", RENDER_MEMORY_MB)


def pool() -> bounded.Pool:
    """The renderer processes of this process (the bench and tests look at it)."""
    return _pool


_keys = itertools.count(1)


def _take() -> bounded.Child:
    try:
        return _pool.take()
    except bounded.ChildGone as exc:
        raise RendererUnavailable(exc.reason) from None


def _ask(key: int, parts: tuple, request: tuple | Callable[[], tuple]) -> bounded.Child:
    """Send ``(op, key, parts, *request)`` to an idle renderer (the parts only when it has not seen
    ``key``); a renderer that died while idle is replaced once. A callable ``request`` is built once
    the renderer is ready, so that a deadline in it does not count the time a new renderer took to
    start (it has its own, ``bounded.SPAWN_TIMEOUT_S``)."""
    for attempt in (1, 2):
        child = _take()
        built = request() if callable(request) else request
        try:
            child.send((built[0], key, None if key in child.known else parts, *built[1:]))
            child.known.add(key)
            return child
        except bounded.ChildGone:
            if attempt == 2:
                raise RendererUnavailable("the renderer stopped") from None
    raise AssertionError("unreachable")


class _Engine:
    """Renders a tuple of ``(part, kind, source)`` for many data: in-process when plain (``_Cost``),
    else in the renderer process; one call shares one budget."""

    def __init__(self, parts: tuple, info: dict, key: int):
        self.parts = parts
        self.info = info
        self.key = key
        # a plain template is compiled here on its second use (or a first use with many data): a
        # template seen once (a preview while editing) costs one compile, in the renderer
        self.plain = info.get("cost") is not None
        self.cost: tuple[int, int] | None = None
        self.data_limit = -1  # the largest data (``_data_size``) a render here may take; -1: none
        self.uses = 0
        self.variables = tuple(info["variables"])
        self.required = tuple(v for v in info["variables"] if v not in info["optional"])

    def plain_for(self, data: Any) -> bool:
        """The plain subset's bound holds for ``data``: it may render in this process."""
        return self.data_limit >= 0 and _data_size(data, self.data_limit) is not None

    def run(self, datas: list, budget_s: float, marks: tuple | None = None) -> list[tuple | None]:
        """Per data: ``("ok", [outputs])``, ``("error", part, message)`` or ``None`` (not rendered:
        the call's budget ran out after other recipients had it)."""
        deadline = time.monotonic() + budget_s
        if self.plain and self.cost is None and (self.uses or len(datas) > 1):
            self.cost = _plain_cost(self.parts)
            self.plain = self.cost is not None
            if self.cost is not None and self.cost[1] <= FAST_MAX_WORK:
                self.data_limit = (FAST_MAX_WORK - self.cost[1]) // max(self.cost[0], 1)
        self.uses += 1
        results: list[tuple | None] = [None] * len(datas)
        settled = False
        remote: list[int] = []
        here = _here[0]
        for i, data in enumerate(datas):
            if not here and not self.plain_for(data):
                remote.append(i)
                continue
            try:
                with _alarm_until(deadline, budget_s) if here else nullcontext():
                    results[i] = ("ok", render_parts(self.parts, data, deadline, budget_s, marks))
            except _Failed as failed:
                if failed.late and settled:
                    return results  # the budget is spent: this one and the rest wait
                results[i] = ("error", failed.part, failed.message)
            settled = True
        while remote and time.monotonic() < deadline:
            child = _ask(self.key, self.parts, ("render", [datas[i] for i in remote], deadline, budget_s, settled,
                                                marks))
            keep = False
            try:
                keep, settled = _collect(child, remote, results, deadline, budget_s, settled)
            finally:
                _pool.give(child) if keep else child.kill()
        return results


def _collect(child: bounded.Child, remote: list[int], results: list, deadline: float, budget_s: float,
             settled: bool) -> tuple[bool, bool]:
    """Read a renderer's answers for the data at ``remote`` into ``results`` and take them off
    ``remote``; returns (the renderer lives on, someone was settled). A renderer that dies fails
    the recipient it was on (or defers it, past the time limit, once someone else was settled)."""
    done = 0
    try:
        while True:
            answer = child.recv(deadline + bounded.GRACE_S)
            for entry in answer[1]:
                if entry[0] == "unknown":  # it forgot the template: the caller sends it again
                    child.known.clear()
                    return answer[2], settled
                i = remote[done]
                done += 1
                if entry[0] == "late":  # the budget is spent: this one and the rest wait
                    remote.clear()
                    return answer[0] == "done" and answer[2], settled
                results[i] = tuple(entry)
                settled = True
            if answer[0] != "more":
                del remote[:done]
                return answer[2], settled
    except bounded.ChildTimeout:
        if done < len(remote) and not settled:
            results[remote[done]] = ("error", "template", time_words(budget_s))
            settled = True
        remote.clear()
        return False, settled
    except bounded.ChildGone as exc:
        if done < len(remote):  # it died on this recipient
            results[remote[done]] = ("error", "template", f"the template stopped the renderer ({exc.reason})")
            done += 1
        del remote[:done]
        return False, True


class _Engines:
    """Engines by their parts, least recently used out first; a template that does not compile is
    remembered as its error (asking again would cost the renderer the same work)."""

    def __init__(self, size: int = 512):
        self._items: OrderedDict = OrderedDict()
        self._size = size
        self._lock = threading.Lock()

    def get(self, parts: tuple):
        with self._lock:
            found = self._items.get(parts)
            if found is not None:
                self._items.move_to_end(parts)
            return found

    def put(self, parts: tuple, item) -> None:
        with self._lock:
            self._items[parts] = item
            self._items.move_to_end(parts)
            while len(self._items) > self._size:
                self._items.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


_engines = _Engines()


def _engine_for(parts: tuple, samples: list | None = None, budget_s: float = PREVIEW_BUDGET_S,
                marks: tuple | None = None) -> tuple[_Engine, list[tuple | None] | None]:
    """The engine of ``parts`` (``CompileError`` when they do not compile). A template not seen
    before is compiled in the renderer, and ``samples`` rendered in the same round trip: their
    results come back too (``None`` when the engine was known: render them as usual)."""
    found = _engines.get(parts)
    first = None
    if found is None:
        found, first = _compile_once(parts, samples, budget_s, marks)
    if isinstance(found, tuple):
        raise CompileError(found[1], found[2])
    return found, first


#: templates being compiled by a thread of this process, and the event their waiters wait on
_compiling: dict[tuple, threading.Event] = {}
_compiling_lock = threading.Lock()


def _compile_once(parts: tuple, samples: list | None, budget_s: float, marks: tuple | None) -> tuple:
    """Compile ``parts`` once in this process however many threads ask at once (a burst of requests
    for a new template would otherwise start a renderer each, all compiling the same source): the
    first compiles, the others wait for its engine (or its error) and render their samples as usual."""
    with _compiling_lock:
        found = _engines.get(parts)
        if found is not None:
            return found, None
        waiter = _compiling.get(parts)
        first = waiter is None
        if waiter is None:
            waiter = _compiling[parts] = threading.Event()
    if not first:
        waiter.wait(COMPILE_BUDGET_S + bounded.SPAWN_TIMEOUT_S + bounded.GRACE_S)
        found = _engines.get(parts)
        if found is not None:
            return found, None
        # the first thread's renderer was unavailable, or the engine already left the cache: try here
    try:
        found, results = _inspect_here(parts) if _here[0] else _inspect(parts, samples or [], budget_s, marks)
        _engines.put(parts, found)
        return found, results
    finally:
        if first:
            with _compiling_lock:
                _compiling.pop(parts, None)
            waiter.set()


def _inspect(parts: tuple, samples: list, budget_s: float, marks: tuple | None = None) -> tuple:
    """One round trip: compile in the renderer (``COMPILE_BUDGET_S`` from when the renderer is ready),
    then render ``samples`` (``budget_s``). Returns (an ``_Engine`` or ``("error", part, message)``, the
    samples' results)."""
    key = next(_keys)
    deadline: list[float] = []

    def request() -> tuple:
        deadline[:] = [time.monotonic() + COMPILE_BUDGET_S]
        return ("inspect", deadline[0], COMPILE_BUDGET_S, samples, budget_s, marks)

    child = _ask(key, parts, request)
    compile_by = deadline[0]
    keep, found = False, None
    results: list[tuple | None] = [None] * len(samples)
    try:
        answer = child.recv(compile_by + bounded.GRACE_S)
        if answer[0] == "error":
            keep = answer[3]
            return ("error", answer[1], answer[2]), None
        found = _Engine(parts, answer[1], key)
        render_by = time.monotonic() + budget_s
        keep, _ = _collect(child, list(range(len(samples))), results, render_by, budget_s, False)
        return found, results
    except bounded.ChildTimeout:
        if found is None:
            return ("error", parts[0][0], time_words(COMPILE_BUDGET_S, "compile")), None
        return found, results
    except bounded.ChildGone as exc:
        if found is None:
            return ("error", parts[0][0], f"the template stopped the renderer ({exc.reason})"), None
        return found, results
    finally:
        _pool.give(child) if keep else child.kill()


#: set in a process that is itself a bounded child (``core.certificate_process``): templates compile and
#: render in it, with the alarm at their budget, and no renderer process of their own
_here = [False]


def render_here() -> None:
    """Compile and render in this process from now on: it is a bounded child already (it cannot start
    a renderer of its own), so the sandbox's checks and the alarm at the budget are the bound here,
    and the parent's kill behind them."""
    _here[0] = True
    signal.signal(signal.SIGALRM, _alarm)


def _inspect_here(parts: tuple) -> tuple:
    try:
        return _Engine(parts, inspect_parts(parts), next(_keys)), None
    except _Failed as failed:
        return ("error", failed.part, failed.message), None


def _plain_cost(parts: tuple) -> tuple[int, int] | None:
    """The plain subset's bound, found again on this process's own parse: the renderer said the
    template is plain, but its word alone lets nothing run here."""
    per = fixed = 0
    for _, kind, source in parts:
        if source.count("{{") + source.count("{%") > FAST_MAX_NODES:  # cannot be plain: not even parsed here
            return None
        try:
            found = _analysed(kind, source).cost
        except Exception:  # noqa: BLE001 - it compiled in the renderer; here it just stays remote
            return None
        if found is None:
            return None
        per, fixed = per + found[0], fixed + found[1]
    return per, fixed


def _mail_parts(subject: str, text: str | None, html: str | None) -> tuple:
    parts = [("subject", "text", subject)]
    if text:
        parts.append(("body_text", "text", text))
    if html:
        parts.append(("body_html", "html", html))
    return tuple(parts)


def _budget_of(budget_s: float | None) -> float:
    return RENDER_BUDGET_S if budget_s is None else budget_s


class CompiledTemplate:
    """Subject, text and HTML compiled once, rendered per recipient.

    ``variables``: the top-level names the parts use; ``required``: those used without a
    ``|default`` or an ``is defined`` test; ``missing(data)``: the required names ``data``
    lacks."""

    def __init__(self, subject: str, text: str | None, html: str | None, *, _samples: list | None = None,
                 _budget_s: float = PREVIEW_BUDGET_S):
        if not (subject or "").strip():
            raise RenderError("subject", "a subject is required")
        if not (text or html):
            raise RenderError("body", "body_text or body_html is required")
        try:
            self._engine, self._first = _engine_for(_mail_parts(subject, text or None, html or None), _samples,
                                                    _budget_s)
        except CompileError as exc:
            raise CompileError(exc.part, f"template error: {exc.message}") from None
        self.variables: tuple[str, ...] = self._engine.variables
        self.required: tuple[str, ...] = self._engine.required
        self._text = bool(text)
        self._html = bool(html)

    @classmethod
    def checked(cls, subject: str, text: str | None, html: str | None, sample: dict | None,
                budget_s: float = PREVIEW_BUDGET_S) -> tuple[CompiledTemplate, Rendered]:
        """Compile and render ``sample`` (the API's sample render, a preview): one round trip to
        the renderer for a template not seen before. Raises ``RenderError``."""
        compiled = cls(subject, text, html, _samples=[sample], _budget_s=budget_s)
        first = compiled._first
        if first is None:  # known already: an ordinary render
            return compiled, compiled.render(sample, budget_s)
        outcome = first[0]
        if not outcome:  # the renderer ran out of time before it
            outcome = ("error", "template", time_words(budget_s))
        return compiled, compiled._result(outcome)

    def missing(self, data: dict | None) -> list[str]:
        """The required variables ``data`` has no key for (attributes inside a value are
        checked when it renders)."""
        have = data if isinstance(data, dict) else {}
        return [name for name in self.required if name not in have]

    def _rendered(self, outputs: list[str]) -> Rendered:
        subject, rest = single_line(outputs[0]), outputs[1:]
        text = rest.pop(0) if self._text else None
        html = rest.pop(0) if self._html else None
        return Rendered(subject, text, html)

    def _result(self, result: tuple) -> Rendered:
        if result[0] == "error":
            raise RenderError(result[1], result[2])
        return self._rendered(result[1])

    def render(self, data: dict | None, budget_s: float | None = None) -> Rendered:
        """Render for one recipient within ``budget_s``; raises ``RenderError`` (the part,
        the line and the undefined name, limit or exception type: never a data value)."""
        budget = _budget_of(budget_s)
        outcome = self._engine.run([data], budget)[0]
        if outcome is None:  # never for a call's first data: only those after it are left out
            outcome = ("error", "template", time_words(budget))
        return self._result(outcome)

    def render_many(self, datas: list, budget_s: float | None = None) -> list[Rendered | RenderError | None]:
        """Render for each data, in order, within one budget for all of them: a ``Rendered``, a
        ``RenderError``, or ``None`` for a recipient not rendered because the budget ran out
        after earlier ones (the first one always gets the whole budget, so a call settles at
        least one recipient). One round trip to the renderer process for the lot."""
        out: list[Rendered | RenderError | None] = []
        for result in self._engine.run(list(datas), _budget_of(budget_s)):
            if result is None:
                out.append(None)
            elif result[0] == "error":
                out.append(RenderError(result[1], result[2]))
            else:
                out.append(self._rendered(result[1]))
        return out


def render(subject: str, text: str | None, html: str | None, data: dict | None,
           budget_s: float | None = None) -> Rendered:
    """Compile (cached) and render once."""
    return CompiledTemplate(subject, text, html).render(data, budget_s)


def render_document(source: str, context: dict, budget_s: float | None = None, part: str = "template") -> str:
    """Render one autoescaped HTML document (a certificate) under the same bounds; raises
    ``CompileError`` or ``RenderError``."""
    return _document(source, context, budget_s, part, None)[0]


def render_marked_document(source: str, context: dict, names: set[str] | frozenset[str], nonce: str,
                           budget_s: float | None = None, part: str = "template") -> tuple[str, list]:
    """``render_document`` with the string values of ``names`` printed as marks
    (``"\\x00<nonce>:<n>\\x00"``, where ``{{ x }}`` prints them: a value the template transforms is plain
    text), and the book the marks index: ``[(name, escaped value), ...]``."""
    html, book = _document(source, context, budget_s, part, (frozenset(names), nonce))
    return html, [tuple(entry) for entry in book]


def _document(source, context, budget_s, part, marks) -> list:
    budget = _budget_of(budget_s)
    engine, first = _engine_for(((part, "document", source),), [context], budget, marks)
    result = first[0] if first is not None else engine.run([context], budget, marks)[0]
    if result is None:
        result = ("error", part, time_words(budget))
    if result[0] == "error":
        raise RenderError(result[1], result[2])
    return result[1]


# Fast address check for bulk input: RFC 5321 lengths, one @, a dotted domain.
_EMAIL_RE = re.compile(
    r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
    r"@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63}$")


def valid_email(address) -> bool:
    """True for a plausible deliverable address (no display names, no CR/LF)."""
    return isinstance(address, str) and len(address) <= 254 and bool(_EMAIL_RE.match(address)) \
        and len(address.partition("@")[0]) <= 64


# ---------------------------------------------------------------------------- the renderer's loop

_alarm_budget = [RENDER_BUDGET_S]


def _alarm(signum, frame):  # noqa: ARG001 - a signal handler's signature
    raise TimeLimit(time_words(_alarm_budget[0]), hard=True)


def _arm(deadline: float, budget_s: float) -> None:
    _alarm_budget[0] = budget_s
    signal.setitimer(signal.ITIMER_REAL, max(deadline - time.monotonic(), 0.001))


def _disarm() -> None:
    signal.setitimer(signal.ITIMER_REAL, 0)


@contextmanager
def _alarm_until(deadline: float, budget_s: float):
    """The alarm at ``deadline`` for a block, then back to the one set before it (sooner wins)."""
    before, _ = signal.getitimer(signal.ITIMER_REAL)
    outer = _alarm_budget[0]
    set_at = time.monotonic()
    left = deadline - set_at
    if before and before < left:  # an earlier deadline outside this block stands
        yield
        return
    _arm(deadline, budget_s)
    try:
        yield
    finally:
        _disarm()
        _alarm_budget[0] = outer
        if before:
            signal.setitimer(signal.ITIMER_REAL, max(before - (time.monotonic() - set_at), 0.001))


def arm(deadline: float, budget_s: float) -> None:
    """For a bounded child (``render_here``): raise ``TimeLimit`` at ``deadline`` (``disarm`` ends it)."""
    _arm(deadline, budget_s)


def disarm() -> None:
    _disarm()


@contextmanager
def _alarm_held():
    """No alarm while an answer is half written (it would cut the message)."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGALRM})


#: the renderer's templates by the caller's key (the parent sends the sources once per renderer)
_known: dict[int, tuple] = {}


def serve(channel: bounded.ChildChannel) -> None:
    """The renderer process's loop: answer requests until the parent goes, or until a render
    left this process in a state not worth keeping (out of memory, stopped by the alarm). The
    last element of every final answer says whether this process goes on."""
    signal.signal(signal.SIGALRM, _alarm)
    while True:
        request = channel.recv()
        if request is None:
            return
        op, key, parts = request[:3]
        if parts is not None:
            if len(_known) >= 4096:  # the parent sends a forgotten template again
                _known.clear()
            _known[key] = parts
        parts = _known.get(key)
        if parts is None:
            channel.send(("done", [("unknown",)], True))
            continue
        if op == "inspect":
            alive = _serve_inspect(channel, parts, *request[3:])
        elif op == "render":
            alive = _serve_render(channel, parts, *request[3:])
        else:
            return
        if not alive:
            return


def _serve_inspect(channel: bounded.ChildChannel, parts, deadline, budget_s, samples, render_budget_s,
                   marks) -> bool:
    """Compile and answer what the template uses (``("compiled", info)``), then render the samples
    (answered as a render request is)."""
    bounded.cpu_allowance(budget_s + bounded.GRACE_S)
    try:
        _arm(deadline, budget_s)
        try:
            info = inspect_parts(parts)
        finally:
            _disarm()
    except _Failed as failed:
        channel.send(("error", failed.part, failed.message, not failed.fatal))
        return not failed.fatal
    except TimeLimit:
        channel.send(("error", parts[0][0], time_words(budget_s, "compile"), False))
        return False
    except MemoryError:
        channel.send(("error", parts[0][0], memory_words(), False))
        return False
    channel.send(("compiled", info))
    return _serve_render(channel, parts, samples, time.monotonic() + render_budget_s, render_budget_s, False,
                         marks)


def _serve_render(channel: bounded.ChildChannel, parts, datas, deadline, budget_s, settled, marks) -> bool:
    """Render each data, flushing answers every few milliseconds; False when this process should end.
    The alarm is armed for the whole request and held off while an answer is written."""
    bounded.cpu_allowance(max(deadline - time.monotonic(), 0) + bounded.GRACE_S)
    batch: list = []
    flushed = time.monotonic()
    alive, i, answered = True, 0, 0
    try:
        _arm(deadline, budget_s)
        try:
            while i < len(datas):
                try:
                    entry: tuple = ("ok", render_parts(parts, datas[i], deadline, budget_s, marks))
                except _Failed as failed:
                    alive = not failed.fatal
                    if failed.late:
                        batch.append(("late",) if settled else ("error", failed.part, failed.message))
                        answered += 1
                        break
                    entry = ("error", failed.part, failed.message)
                batch.append(entry)
                answered += 1
                if not alive:
                    break
                i += 1
                settled = True
                now = time.monotonic()
                if now - flushed > 0.005:
                    with _alarm_held():
                        channel.send(("more", batch))
                    batch, flushed = [], now
        finally:
            _disarm()
    except TimeLimit:  # the alarm went off between two renders (in this loop's own lines)
        alive = False
        if answered <= i < len(datas):
            batch.append(("late",) if settled else ("error", parts[0][0], time_words(budget_s)))
    except MemoryError:
        alive = False
        if answered <= i < len(datas):
            batch.append(("error", parts[0][0], memory_words()))
    channel.send(("done", batch, alive))
    return alive
