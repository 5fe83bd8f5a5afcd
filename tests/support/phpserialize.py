"""PHP's ``serialize()`` for the tests' IOMAD rows, byte for byte as PHP 8 writes it.

Writes what IOMAD's ``queue_for_cron`` puts in ``email.headers``: arrays
(dicts and lists), strings (length in UTF-8 bytes), ints, bools, null and
objects (``PhpObject``: ``O:8:"stdClass":n:{...}``, public properties in
assignment order). ``tests/core/lms/test_phpserial.py`` holds it to real
PHP's output. Floats are not written (IOMAD's headers hold none).
"""
from __future__ import annotations


class PhpObject(dict):
    """A PHP object: its public properties, in order (``stdClass`` unless named)."""

    def __init__(self, properties=(), class_name: str = "stdClass", **more):
        super().__init__(properties, **more)
        self.class_name = class_name


def dumps(value) -> str:
    """``serialize(value)`` as PHP writes it."""
    if value is None:
        return "N;"
    if isinstance(value, bool):
        return f"b:{int(value)};"
    if isinstance(value, int):
        return f"i:{value};"
    if isinstance(value, str):
        return f's:{len(value.encode("utf-8"))}:"{value}";'
    if isinstance(value, PhpObject):
        name = value.class_name
        return f'O:{len(name.encode())}:"{name}":{len(value)}:{{' + _members(value) + "}"
    if isinstance(value, (list, tuple)):
        value = dict(enumerate(value))
    if isinstance(value, dict):
        return f"a:{len(value)}:{{" + _members(value) + "}"
    raise TypeError(f"cannot serialise {type(value).__name__}")


def _members(value: dict) -> str:
    for key in value:
        if not isinstance(key, (int, str)) or isinstance(key, bool):
            raise TypeError(f"a PHP array key is an int or a string, not {key!r}")
    return "".join(dumps(k) + dumps(v) for k, v in value.items())
