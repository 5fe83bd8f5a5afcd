"""A new template asked for by many threads at once is compiled once in the process, and the compile
budget starts when the renderer is ready (a renderer's start-up is not the template's time)."""
from __future__ import annotations

import threading
import uuid

from core import rendering


def test_a_burst_of_threads_compiles_a_new_template_once():
    body = "{% for c in cs %}{{ c }}{% endfor %} " + uuid.uuid4().hex  # not plain: it compiles in the renderer
    barrier = threading.Barrier(8)
    made: list = []

    def ask() -> None:
        barrier.wait()
        template = rendering.CompiledTemplate("Hello {{ name }}", body, None)
        made.append((template.variables, template.render({"name": "Ann", "cs": [1, 2]}).text))

    before = rendering.pool().taken
    threads = [threading.Thread(target=ask) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    compiles = rendering.pool().taken - before - 8  # each thread's render goes to the renderer too
    assert len(made) == 8 and all(m == made[0] for m in made)
    assert made[0][1].startswith("12 ") and set(made[0][0]) == {"name", "cs"}
    assert compiles == 1, f"{compiles} compiles for one template"


def test_a_template_that_does_not_compile_is_one_error_for_every_waiting_thread():
    source = "{% for %} " + uuid.uuid4().hex
    barrier = threading.Barrier(4)
    errors: list = []

    def ask() -> None:
        barrier.wait()
        try:
            rendering.CompiledTemplate("s", source, None)
        except rendering.CompileError as exc:
            errors.append(exc.message)

    before = rendering.pool().taken
    threads = [threading.Thread(target=ask) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(errors) == 4 and len(set(errors)) == 1 and errors[0].startswith("template error:")
    assert rendering.pool().taken - before == 1
