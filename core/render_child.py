"""The renderer process: ``python -m core.render_child <memory MB>``, started by ``core.bounded``.

It imports the sandbox, compiles a first template (so a request pays no import), caps its
own memory, says it is ready and then serves ``core.rendering``'s requests until its
parent goes away.
"""
from __future__ import annotations

import sys

from core import bounded, rendering


def main() -> None:
    memory_mb = int(sys.argv[1])
    channel = bounded.ChildChannel()
    rendering.inspect_parts((("warm", "html", "{{ a|e }}{% for b in c %}{{ b ~ a }}{% endfor %}"),))
    bounded.child_limits(memory_mb)
    channel.send(("ready",))
    rendering.serve(channel)


if __name__ == "__main__":
    main()
