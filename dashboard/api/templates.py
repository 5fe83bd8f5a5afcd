"""The templates API (CONTRACT §8): the company's stored email templates.
Another company's template is a 404 like a missing one."""
from __future__ import annotations

from flask import g, jsonify, request

from core import templates
from dashboard.api.base import bp, token_required
from dashboard.errors import json_error


@bp.get("/templates")
@token_required
def list_templates():
    return jsonify({"templates": [templates.to_dict(t) for t in templates.list_templates(g.company_id)]})


@bp.get("/templates/<path:name>")
@token_required
def get_template(name: str):
    tpl = templates.find(g.company_id, name)
    if tpl is None:
        return json_error(404, "not_found", f"no template named {name[:100]!r}")
    return jsonify(templates.to_dict(tpl))


@bp.put("/templates/<path:name>")
@token_required
def put_template(name: str):
    payload = request.get_json(silent=True)
    if payload is None:
        return json_error(400, "invalid_json", "the body must be JSON (Content-Type: application/json)")
    try:
        tpl, created = templates.save(g.company_id, name, payload)
    except templates.TemplateError as exc:
        return json_error(400, exc.code, exc.message, exc.details)
    # the save's warnings (names the type does not know), in words: an addition to CONTRACT §8
    return jsonify({**templates.to_dict(tpl), "warnings": tpl.warnings}), 201 if created else 200


@bp.delete("/templates/<path:name>")
@token_required
def delete_template(name: str):
    tpl = templates.find(g.company_id, name)
    if tpl is None:
        return json_error(404, "not_found", f"no template named {name[:100]!r}")
    templates.delete(g.company_id, tpl)
    return "", 204
