"""A small, strict reader of PHP's ``serialize()`` format (IOMAD's ``email.headers``).

Supports what IOMAD writes: ``N;``, ``b:``, ``i:``, ``d:``, ``s:`` (length
in bytes), ``a:`` (arrays → dict) and ``O:`` (objects → dict of their
properties; a private or protected property keeps PHP's ``\0*\0name`` key).
No references, no custom serialisation; nothing is executed. Anything
else, or trailing bytes, is ``PhpSerialError``. Held to real PHP's
``serialize()`` output by ``tests/core/lms/test_phpserial.py``.
"""
from __future__ import annotations

MAX_DEPTH = 16


class PhpSerialError(ValueError):
    """The value is not PHP-serialised data of a kind we read."""


def loads(raw: str | bytes):
    data = raw.encode("utf-8") if isinstance(raw, str) else bytes(raw)
    value, pos = _value(data, 0, 0)
    if pos != len(data):
        raise PhpSerialError("trailing data after the value")
    return value


def _until(data: bytes, pos: int, stop: bytes) -> tuple[bytes, int]:
    end = data.find(stop, pos)
    if end < 0:
        raise PhpSerialError("truncated value")
    return data[pos:end], end + 1


def _int(token: bytes) -> int:
    try:
        return int(token)
    except ValueError:
        raise PhpSerialError("bad number") from None


def _value(data: bytes, pos: int, depth: int):
    if depth > MAX_DEPTH:
        raise PhpSerialError("nested too deeply")
    if pos + 1 >= len(data) + (1 if data[pos:pos + 2] == b"N;" else 0):
        raise PhpSerialError("truncated value")
    kind = data[pos:pos + 1]
    if kind == b"N" and data[pos + 1:pos + 2] == b";":
        return None, pos + 2
    if data[pos + 1:pos + 2] != b":":
        raise PhpSerialError("unknown type")
    pos += 2
    if kind == b"b":
        token, pos = _until(data, pos, b";")
        if token not in (b"0", b"1"):
            raise PhpSerialError("bad boolean")
        return token == b"1", pos
    if kind == b"i":
        token, pos = _until(data, pos, b";")
        return _int(token), pos
    if kind == b"d":
        token, pos = _until(data, pos, b";")
        try:
            return float(token), pos
        except ValueError:
            raise PhpSerialError("bad float") from None
    if kind == b"s":
        return _string(data, pos)
    if kind == b"a":
        count, pos = _until(data, pos, b":")
        return _items(data, pos, _int(count), depth)
    if kind == b"O":
        _name_len, pos = _until(data, pos, b":")
        if data[pos:pos + 1] != b'"':
            raise PhpSerialError("bad class name")
        end = data.find(b'":', pos + 1)
        if end < 0:
            raise PhpSerialError("bad class name")
        count, pos = _until(data, end + 2, b":")
        return _items(data, pos, _int(count), depth)
    raise PhpSerialError("unknown type")


def _string(data: bytes, pos: int) -> tuple[str, int]:
    length, pos = _until(data, pos, b":")
    n = _int(length)
    if n < 0 or data[pos:pos + 1] != b'"' or data[pos + 1 + n:pos + 3 + n] != b'";':
        raise PhpSerialError("bad string")
    try:
        return data[pos + 1:pos + 1 + n].decode("utf-8"), pos + 3 + n
    except UnicodeDecodeError:
        raise PhpSerialError("a string is not UTF-8") from None


def _items(data: bytes, pos: int, count: int, depth: int) -> tuple[dict, int]:
    if count < 0 or data[pos:pos + 1] != b"{":
        raise PhpSerialError("bad array")
    pos += 1
    found: dict = {}
    for _ in range(count):
        key, pos = _value(data, pos, depth + 1)
        if not isinstance(key, (int, str)):
            raise PhpSerialError("bad array key")
        found[key], pos = _value(data, pos, depth + 1)
    if data[pos:pos + 1] != b"}":
        raise PhpSerialError("bad array end")
    return found, pos + 1

