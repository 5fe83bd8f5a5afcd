"""Request bodies: read with a cap, parsed with a nesting limit.

The app-wide ``MAX_CONTENT_LENGTH`` (``OFFLOAD_MAX_CONTENT_LENGTH``, sized
for the largest job) holds for every request; endpoints open to the
internet take far less, and ``read_capped`` enforces that whether or not
the client sent a Content-Length (a chunked body is read from
``request.stream`` only up to the cap, never whole). JSON deeper than
``MAX_JSON_DEPTH`` is a 400 before any object is built for it.
"""
from __future__ import annotations

import json
import re

from flask import request
from flask.json.provider import DefaultJSONProvider
from werkzeug.exceptions import RequestEntityTooLarge

MAX_JSON_DEPTH = 64
_STRINGS = re.compile(rb'"(?:[^"\\]|\\.)*"')
_NOT_BRACKETS = bytes(set(range(256)) - set(b"[]{}"))


def read_capped(limit: int) -> bytes:
    """The request body, at most ``limit`` bytes; raises 413 past it (chunked bodies too)."""
    if request.content_length is not None and request.content_length > limit:
        raise RequestEntityTooLarge(f"the body may have at most {limit} bytes")
    request.max_content_length = min(limit, request.max_content_length or limit)
    stream = request.stream
    chunks, size = [], 0
    while True:
        chunk = stream.read(min(65536, limit + 1 - size))
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            raise RequestEntityTooLarge(f"the body may have at most {limit} bytes")
    return b"".join(chunks)


def json_depth(raw: bytes | str, limit: int = MAX_JSON_DEPTH) -> int:
    """How deep ``raw`` nests arrays and objects (stops counting past ``limit``)."""
    if isinstance(raw, str):
        raw = raw.encode("utf-8", "surrogatepass")
    brackets = _STRINGS.sub(b"", raw).translate(None, _NOT_BRACKETS)
    depth = deepest = 0
    for char in brackets:
        if char in (91, 123):  # [ {
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > limit:
                    break
        else:
            depth -= 1
    return deepest


def loads(raw: bytes | str):
    """``json.loads`` refusing nesting deeper than ``MAX_JSON_DEPTH`` (a ValueError)."""
    if json_depth(raw) > MAX_JSON_DEPTH:
        raise ValueError(f"JSON nested deeper than {MAX_JSON_DEPTH} levels")
    try:
        return json.loads(raw)
    except RecursionError:
        raise ValueError(f"JSON nested deeper than {MAX_JSON_DEPTH} levels") from None


class BoundedJSONProvider(DefaultJSONProvider):
    """Flask's JSON, with the nesting limit on every ``request.get_json``."""

    def loads(self, s, **kwargs):
        if json_depth(s) > MAX_JSON_DEPTH:
            raise ValueError(f"JSON nested deeper than {MAX_JSON_DEPTH} levels")
        try:
            return super().loads(s, **kwargs)
        except RecursionError:
            raise ValueError(f"JSON nested deeper than {MAX_JSON_DEPTH} levels") from None
