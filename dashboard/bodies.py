"""Request bodies: read with a cap, parsed with a nesting limit.

The app-wide ``MAX_CONTENT_LENGTH`` (``OFFLOAD_MAX_CONTENT_LENGTH``, sized
for the largest job) holds for every request; endpoints open to the
internet take far less, and ``read_capped`` enforces that whether or not
the client sent a Content-Length (a chunked body is read from
``request.stream`` only up to the cap, never whole). JSON deeper than
``MAX_JSON_DEPTH`` is a 400 before any object is built for it.

Form bodies (``application/x-www-form-urlencoded``, ``multipart/form-data``:
the login, the settings, templates) may have at most ``OFFLOAD_MAX_FORM_BYTES``
unless the view sets its own limit first (the CSV uploads): ``BoundedRequest``
applies it before anything parses the form, so a 60 MB body to ``/login`` is
a 413 from its ``Content-Length`` (or from the stream's first bytes past the
cap, chunked), never read whole.
"""
from __future__ import annotations

import json
import re

from flask import Request, Response, request
from flask.json.provider import DefaultJSONProvider
from werkzeug.exceptions import RequestEntityTooLarge

from core import settings

MAX_JSON_DEPTH = 64
FORM_TYPES = frozenset({"application/x-www-form-urlencoded", "multipart/form-data"})


class BoundedRequest(Request):
    """Flask's request, with form bodies capped at ``OFFLOAD_MAX_FORM_BYTES`` unless the view set a
    limit of its own (``request.max_content_length = ...``) before reading the form."""

    @property
    def max_content_length(self) -> int | None:
        if self._max_content_length is not None:
            return self._max_content_length
        limit = Request.max_content_length.fget(self)  # type: ignore[attr-defined]
        if self.mimetype in FORM_TYPES:
            cap = settings.current().max_form_bytes
            return cap if limit is None else min(limit, cap)
        return limit

    @max_content_length.setter
    def max_content_length(self, value: int | None) -> None:
        self._max_content_length = value
_STRINGS = re.compile(rb'"(?:[^"\\]|\\.)*"')
_NOT_BRACKETS = bytes(set(range(256)) - set(b"[]{}"))


def init_app(app) -> None:
    @app.before_request
    def no_nul_in_the_query():
        """A NUL in a query parameter is a 400 before any view sees it (PostgreSQL refuses NUL in text:
        it would otherwise surface as a 500 wherever the value reaches a query)."""
        if "\x00" in request.query_string.decode("latin-1") or "%00" in request.query_string.decode("latin-1"):
            if any("\x00" in key or "\x00" in value for key, value in request.args.items(multi=True)):
                message = "query parameters may not contain NUL characters"
                if request.path.startswith(("/api/", "/callbacks/")):
                    return Response(json.dumps({"error": "invalid_query", "message": message}), status=400,
                                    mimetype="application/json")
                return Response(message + "\n", status=400, mimetype="text/plain")
        return None


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
