"""Keeps the OpenAPI document true: every response the API tests get under
``/api/v1`` is validated against ``dashboard.api.openapi.DOCUMENT`` (the
path and method must be documented, a 2xx status must be listed, a JSON body
must match its schema; JSON Schema 2020-12 as OpenAPI 3.1 uses it)."""
from __future__ import annotations

import json
import re

from flask.testing import FlaskClient
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from dashboard.api.openapi import DOCUMENT

BASE = DOCUMENT["servers"][0]["url"]
URI = "urn:offload:openapi"
_registry = Registry().with_resource(URI, Resource.from_contents(DOCUMENT, default_specification=DRAFT202012))
_paths = [(re.compile("^" + re.sub(r"\{[^}]+\}", "[^/]+", p) + "$"), p) for p in DOCUMENT["paths"]]
checked: list[tuple[str, str, int]] = []


def _pointer(*parts: str) -> str:
    return "/".join(p.replace("~", "~0").replace("/", "~1") for p in parts)


def validate(method: str, path: str, status: int, content_type: str | None, raw: bytes) -> None:
    """Raise ``AssertionError`` when the response is not what the document says."""
    sub = path.split("?", 1)[0][len(BASE):] or "/"
    template = next((t for rx, t in _paths if rx.match(sub)), None)
    if template is None and status == 404:
        return  # no such path: a 404 is the right answer
    assert template is not None, f"{method} {path}: the path is not in the OpenAPI document"
    operation = DOCUMENT["paths"][template].get(method.lower())
    if operation is None:
        assert status in (404, 405), f"{method} {template}: not in the OpenAPI document (got {status})"
        return
    key = str(status) if str(status) in operation["responses"] else "default"
    assert key != "default" or status >= 400, f"{method} {template}: status {status} is not documented"
    response = operation["responses"][key]
    content = response.get("content", {}).get("application/json")
    if content is None:
        assert not raw.strip() or status >= 400, f"{method} {template} {status}: undocumented body"
        return
    assert (content_type or "").startswith("application/json"), f"{method} {template} {status}: not JSON"
    where = _pointer("paths", template, method.lower(), "responses", key, "content", "application/json", "schema")
    schema = {"$ref": f"{URI}#/{where}"}
    errors = sorted(Draft202012Validator(schema, registry=_registry).iter_errors(json.loads(raw)), key=str)
    assert not errors, f"{method} {template} {status}: " + "; ".join(
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors[:5])
    checked.append((method.upper(), template, status))


class CheckedClient(FlaskClient):
    """The test client, checking each ``/api/v1`` response against the document."""

    def open(self, *args, **kwargs):
        response = super().open(*args, **kwargs)
        request = response.request
        if request.path.startswith(BASE + "/") and request.path != BASE + "/docs":
            validate(request.method, request.path, response.status_code, response.content_type,
                     response.get_data())
        return response
