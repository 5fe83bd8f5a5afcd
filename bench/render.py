"""The cost of a bounded render against the in-process render it replaced, and the bound itself.

Prints, for a typical welcome/password mail (subject, text and HTML):

- one-off renders (the API's sample render at submit, a dashboard preview): the template
  compiled once (the usual case: jobs reuse templates) and a new template each time;
- the direct-send path: one chunk of 50 recipients (a provider call's worth), per recipient;

each against the baseline measured in the same run: the sandbox rendering in this process,
as ``CompiledTemplate.render`` did before the renderer process existed (same environments,
no child, no plain-subset check). ``--git-before REV`` also loads ``core/rendering.py``
as it was at REV and measures that. Rounds alternate baseline and new; the figure is the
median of the rounds (the machine is shared: ratios count, not absolute times).

The same mail with a loop (not in the plain subset, so it goes to the renderer process)
shows the round trip's cost. CPU counts this process and the renderer processes (the cost a
render puts on the machine); wall time includes waiting for the CPU on a busy machine.
Then each attack payload of the security review is
rendered under the preview budget (2 s) and the worker budget (10 s), and the script
prints how long it ran and how much memory the renderer reached before it was stopped,
and what the calling process grew by (nothing, is the point).

    .venv/bin/python bench/render.py [--rounds 7] [--git-before REV] [--skip-attacks]
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from core import certificate_process, rendering  # noqa: E402
from core.certificate_render import DEFAULT_TEMPLATE_CSS, DEFAULT_TEMPLATE_HTML, render_certificate_pdf  # noqa: E402

SUBJECT = "Welcome to {{ site_name }}, {{ firstname }}"
TEXT = """Hi {{ firstname }} {{ lastname }},

an account has been created for you on {{ site_name }}.

Username: {{ username }}
Password: {{ password }}

Sign in at {{ login_url }} and change your password.
{% if course is defined %}You are enrolled in {{ course }}.{% endif %}

-- {{ company|default('The team') }}
"""
HTML = """<html><body>
<p>Hi {{ firstname }} {{ lastname }},</p>
<p>an account has been created for you on <b>{{ site_name }}</b>.</p>
<table>
  <tr><td>Username</td><td>{{ username }}</td></tr>
  <tr><td>Password</td><td><code>{{ password }}</code></td></tr>
</table>
<p><a href="{{ login_url }}">Sign in</a> and change your password.</p>
{% if course is defined %}<p>You are enrolled in <i>{{ course|title }}</i>.</p>{% endif %}
<p>-- {{ company|default('The team') }}</p>
</body></html>"""
LOOP_HTML = HTML.replace("</table>", "</table>\n<ul>{% for c in courses %}<li>{{ c }}</li>{% endfor %}</ul>")


def recipient(i: int) -> dict:
    return {"firstname": f"Ada{i}", "lastname": "Lovelace", "site_name": "Acme Academy", "username": f"ada{i}",
            "password": f"S3cret-{i:05d}!", "login_url": "https://lms.example.com/login/index.php",
            "course": "analytical engines 101", "company": "Acme Learning Ltd"}


def learner(i: int) -> dict:
    return {**recipient(i), "courses": ["Fire safety", "First aid", "Manual handling"]}


class InProcess:
    """The baseline: what ``CompiledTemplate`` was before the renderer process, on the same sandbox."""

    def __init__(self, subject, text, html):
        env = rendering.ENVIRONMENTS
        self.parts = [rendering._compiled(env["text"], subject), rendering._compiled(env["text"], text) if text
                      else None, rendering._compiled(env["html"], html) if html else None]

    def render(self, data, budget_s=rendering.RENDER_BUDGET_S):
        subject, text, html = self.parts
        return rendering.Rendered(rendering.single_line(rendering.render_bounded(subject, data, budget_s)),
                                  rendering.render_bounded(text, data, budget_s) if text else None,
                                  rendering.render_bounded(html, data, budget_s) if html else None)


def load_before(rev: str):
    """``core/rendering.py`` as it was at ``rev``, as a module of its own."""
    source = subprocess.run(["git", "show", f"{rev}:core/rendering.py"], cwd=ROOT, check=True,
                            capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / "rendering_before.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("rendering_before", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["rendering_before"] = module
    spec.loader.exec_module(module)
    return module


def _renderer_cpu() -> float:
    """CPU seconds the renderer processes of this bench have used (``/proc/<pid>/schedstat``, in ns)."""
    total = 0
    for pid in _renderer_pids():
        try:
            with open(f"/proc/{pid}/schedstat") as fh:
                total += int(fh.read().split()[0])
        except OSError:
            pass
    return total / 1e9


def per_call(fn, n: int) -> tuple[float, float]:
    """(wall, CPU of this process and the renderers) per call."""
    renderer = _renderer_cpu()
    cpu = time.process_time()
    started = time.perf_counter()
    for _ in range(n):
        fn()
    wall = time.perf_counter() - started
    cpu = time.process_time() - cpu + _renderer_cpu() - renderer
    return wall / n, cpu / n


def compare(label: str, unit: str, cases: dict, rounds: int, n: int, per: int = 1) -> None:
    """Alternate the cases for ``rounds`` rounds; print each median (wall, and CPU of both processes)
    and its ratio to the first case's."""
    for fn in cases.values():
        fn()  # warm: compiled, renderer started
    walls: dict[str, list[float]] = {name: [] for name in cases}
    cpus: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(rounds):
        for name, fn in cases.items():
            wall, cpu = per_call(fn, n)
            walls[name].append(wall / per)
            cpus[name].append(cpu / per)
    print(f"  {label} (per {unit}):")
    for what, values in (("wall", walls), ("CPU ", cpus)):
        medians = {name: statistics.median(v) for name, v in values.items()}
        base = next(iter(medians.values()))
        shown = ", ".join(f"{name} {value * 1e6:8.1f} us ({value / base:4.2f}x)" for name, value in medians.items())
        print(f"    {what} {shown}")


def costs(rounds: int, before) -> None:
    data = recipient(0)
    chunk = [recipient(i) for i in range(50)]
    new = rendering.CompiledTemplate(SUBJECT, TEXT, HTML)
    new.render_many([data, data])  # a second use: compiled in this process too
    print(f"typical mail: {len(SUBJECT) + len(TEXT) + len(HTML)} characters of template, "
          f"plain subset: {new._engine.plain} (work bound per data character, fixed: {new._engine.cost})")

    def fresh(counter: list[int]) -> tuple[str, str, str]:
        counter[0] += 1  # a new template: every part differs from every earlier one
        mark = f"{{# {id(counter)} {counter[0]} #}}"
        return SUBJECT + mark, TEXT + mark, HTML + mark

    cases = {"baseline": lambda: InProcess(SUBJECT, TEXT, HTML).render(data, rendering.PREVIEW_BUDGET_S)}
    if before:
        cases["before"] = lambda: before.CompiledTemplate(SUBJECT, TEXT, HTML).render(data, budget_s=2.0)
    cases["bounded"] = lambda: rendering.CompiledTemplate.checked(SUBJECT, TEXT, HTML, data)
    compare("one-off (API sample, preview), compiled once", "render", cases, rounds, 2000)

    counters = {name: [0] for name in ("baseline", "before", "bounded")}
    cases = {"baseline": lambda: InProcess(*fresh(counters["baseline"])).render(data)}
    if before:
        cases["before"] = lambda: before.CompiledTemplate(*fresh(counters["before"])).render(data)
    cases["bounded"] = lambda: rendering.CompiledTemplate.checked(*fresh(counters["bounded"]), data)
    compare("one-off, a template never seen before", "render", cases, max(3, rounds // 2), 30)

    base = InProcess(SUBJECT, TEXT, HTML)
    cases = {"baseline": lambda: [base.render(d) for d in chunk]}
    if before:
        old = before.CompiledTemplate(SUBJECT, TEXT, HTML)
        cases["before"] = lambda: [old.render(d) for d in chunk]
    cases["bounded"] = lambda: new.render_many(chunk)
    compare("direct send, a chunk of 50", "recipient", cases, rounds, 40, per=len(chunk))

    loop = rendering.CompiledTemplate(SUBJECT, TEXT, LOOP_HTML)
    print(f"the same mail with a loop over 3 courses (plain subset: {loop._engine.plain}: "
          "it renders in the renderer process)")
    base = InProcess(SUBJECT, TEXT, LOOP_HTML)
    data, chunk = learner(0), [learner(i) for i in range(50)]
    compare("one-off, compiled once", "render",
            {"baseline": lambda: base.render(data),
             "bounded": lambda: rendering.CompiledTemplate.checked(SUBJECT, TEXT, LOOP_HTML, data)}, rounds, 1000)
    compare("direct send, a chunk of 50", "recipient",
            {"baseline": lambda: [base.render(d) for d in chunk], "bounded": lambda: loop.render_many(chunk)},
            rounds, 40, per=len(chunk))
    print(f"  renderer processes started by this bench so far: {rendering.pool().spawned}")


def certificate_costs(rounds: int) -> None:
    """A planned certificate (the default template, as a job issues it) made here and in the certificate process."""
    fields = [{"learner_name": f"Learner {i:03d}", "course_name": "Fire Safety", "completion_date": date(2026, 1, 5),
               "grade": "94%", "issuer": "Acme Learning Ltd"} for i in range(20)]

    def here():
        for f in fields:
            render_certificate_pdf(DEFAULT_TEMPLATE_HTML, DEFAULT_TEMPLATE_CSS, f, logo=None, code="0" * 20,
                                   verify_url="https://lms.example.com/verify/" + "0" * 20, planned=True)

    def bounded_child():
        for f in fields:
            certificate_process.render_pdf(DEFAULT_TEMPLATE_HTML, DEFAULT_TEMPLATE_CSS, f, logo=None, code="0" * 20,
                                           verify_url="https://lms.example.com/verify/" + "0" * 20, planned=True)

    print("certificates (default template, planned as a job issues them):")
    compare("one certificate", "certificate", {"in-process": here, "certificate process": bounded_child},
            max(3, rounds // 2), 3, per=len(fields))


ATTACKS = [
    ("lipsum(400000)|length", "{{ lipsum(400000)|length }}"),
    ("lipsum(600000)", "{{ lipsum(600000) }}"),
    ("batch(5e7, 'a')", "{{ [1]|batch(50000000, 'a')|list|length }}"),
    ("~ concatenation, doubling", "{% set s = 'x' * 99999 %}{% set s = s ~ s ~ s ~ s %}{{ s|length }}"),
    ("([[0]*1000]*100000)|string", "{{ ([[0]*1000]*100000)|string|length }}"),
    ("([[0]*1000]*100000)|tojson (C code)", "{{ ([[0]*1000]*100000)|tojson|length }}"),
    ("([[0]*1000]*100000)|map('list') (memory)", "{{ ([[0]*1000]*100000)|map('list')|list|length }}"),
    ("9**(9**7)", "{{ 9**(9**7) }}"),
    ("range loops 10^8", "{% for i in range(10000) %}{% for j in range(10000) %}x{% endfor %}{% endfor %}"),
]


class PeakWatch:
    """The peak resident memory of the template renderers while a render runs: each one's peak is reset
    first (``/proc/<pid>/clear_refs``), then read every 10 ms."""

    def __init__(self):
        self.peak_kb = 0
        for pid in _renderer_pids(kinds=(b"core.render_child",)):
            try:
                with open(f"/proc/{pid}/clear_refs", "w") as fh:
                    fh.write("5")
            except OSError:
                pass
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def _run(self):
        while not self._stop.is_set():
            for pid in _renderer_pids(kinds=(b"core.render_child",)):
                try:
                    with open(f"/proc/{pid}/status") as fh:
                        for line in fh:
                            if line.startswith("VmHWM:"):
                                self.peak_kb = max(self.peak_kb, int(line.split()[1]))
                except OSError:
                    pass
            self._stop.wait(0.01)


def _renderer_pids(kinds=(b"core.render_child", b"core.certificate_process")) -> list[int]:
    pids = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as fh:
                    fields = fh.read().rsplit(")", 1)[1].split()
                with open(f"/proc/{name}/cmdline", "rb") as fh:
                    cmd = fh.read()
            except OSError:
                continue
            if int(fields[1]) == os.getpid() and any(kind in cmd for kind in kinds):
                pids.append(int(name))
    return pids


def _self_kb(field: str = "VmRSS") -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def attacks(budgets: list[float]) -> None:
    print(f"attack payloads: stopped after (wall), the renderer's peak memory (its cap: "
          f"{rendering.RENDER_MEMORY_MB} MB over its resting size), the calling process's growth, and whether "
          "the renderer that ran it was ended (alarm, memory cap or kill)")
    for budget in budgets:
        print(f"  budget {budget:g} s:")
        for label, body in ATTACKS:
            template = rendering.CompiledTemplate("Attack", body, None)  # compiled (and a renderer up) first
            rendering.CompiledTemplate("Warm", "{% for i in [1] %}{{ i }}{% endfor %}", None).render({})
            idle = rendering.pool().idle_pids()
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")  # this process's peak from here on
            rss_before = _self_kb()
            with PeakWatch() as watch:
                started = time.monotonic()
                try:
                    template.render({}, budget_s=budget)
                    outcome = "NOT STOPPED"
                except rendering.RenderError as exc:
                    outcome = exc.message
                took = time.monotonic() - started
            ended = bool(idle) and not any(os.path.exists(f"/proc/{pid}") for pid in idle)
            grew = max(0, _self_kb("VmHWM") - rss_before) / 1024
            print(f"    {label:<40} {took:6.2f} s  renderer peak {watch.peak_kb / 1024:4.0f} MB  caller +"
                  f"{grew:3.0f} MB  renderer ended: {'yes' if ended else 'no '}  {outcome}")
    template = rendering.CompiledTemplate("Attack", "{{ lipsum(n)|length }}", None)
    started = time.monotonic()
    results = template.render_many([{"n": 400000}, {"n": 400000}])
    took = time.monotonic() - started
    words = ["deferred to the next run" if r is None else r.message if isinstance(r, rendering.RenderError)
             else "rendered" for r in results]
    print(f"  a worker chunk of 2 recipients, each lipsum(400000), budget {rendering.RENDER_BUDGET_S:g} s: "
          f"{took:.2f} s; first: {words[0]}; second: {words[1]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7, help="alternating rounds per figure (median shown)")
    parser.add_argument("--git-before", metavar="REV", help="also measure core/rendering.py as it was at REV")
    parser.add_argument("--skip-attacks", action="store_true", help="only the cost figures")
    options = parser.parse_args()
    before = load_before(options.git_before) if options.git_before else None
    print(f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}; medians of {options.rounds} alternating rounds")
    costs(options.rounds, before)
    if not options.skip_attacks:
        attacks([rendering.PREVIEW_BUDGET_S, rendering.RENDER_BUDGET_S])
    certificate_costs(options.rounds)
    print(f"this process's peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    main()
