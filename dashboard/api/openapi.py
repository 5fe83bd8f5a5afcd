"""The OpenAPI 3.1 document of the LMS API (``GET /api/v1/openapi.json``) and
its page (``GET /api/v1/docs``): Swagger UI, vendored from npm at a pinned
version into ``static/vendor/swagger-ui`` (``scripts/vendor-swagger-ui.sh``;
no CDN), which resolves every ``$ref``. The test suite validates every API
response it gets against this document (``tests/support/openapi.py``), so it
stays true."""
from __future__ import annotations

import os

from flask import current_app, jsonify, render_template

from core import fields
from core.models import JOB_TYPES, JobStatus, RecipientStatus
from dashboard.api.base import bp

JSON = "application/json"


def ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def body(schema: dict, description: str) -> dict:
    return {"description": description, "content": {JSON: {"schema": schema}}}


def error(description: str) -> dict:
    return body(ref("Error"), description)


STAMP = {"type": ["string", "null"], "format": "date-time"}
ERRORS = {"401": error("missing or wrong bearer token"), "default": error("an error (JSON, 4xx/5xx)")}
JOB_ID = {"name": "job_id", "in": "path", "required": True, "schema": {"type": "integer"}}
TEMPLATE_NAME = {"name": "name", "in": "path", "required": True, "schema": {"type": "string", "maxLength": 100},
                 "description": "the template's name (letters, digits, spaces, `_`, `.`, `-`)"}
PAGE = {"name": "page", "in": "query", "schema": {"type": "integer", "minimum": 1, "default": 1}}

SCHEMAS = {
    "Error": {"type": "object", "required": ["error", "message"], "properties": {
        "error": {"type": "string", "description": "a stable error code, e.g. `template_error`"},
        "message": {"type": "string", "description": "what is wrong, for a person"},
        "details": {"description": "more about it (which part, which field)"}}},
    "Job": {"type": "object", "required": ["id", "type", "status", "company_id", "email_count", "emails_sent",
                                           "emails_failed", "created_at", "started_at", "completed_at"],
            "properties": {
                "id": {"type": "integer"}, "type": {"enum": list(JOB_TYPES)},
                "status": {"enum": [s.value for s in JobStatus]}, "company_id": {"type": "integer"},
                "source": {"type": "string", "description": "how the job came in: `api`, `event` (LMS events), "
                           "`dashboard`, `lms` (IOMAD's email queue) or `smtp` (SMTP submission: each message "
                           "as the LMS sent it)"},
                "email_count": {"type": "integer"}, "emails_sent": {"type": "integer"},
                "emails_failed": {"type": "integer"}, "emails_suppressed": {"type": "integer"},
                "emails_bounced": {"type": "integer"}, "emails_uncertain": {"type": "integer"},
                "created_at": STAMP, "started_at": STAMP, "completed_at": STAMP, "send_at": STAMP,
                "paused_reason": {"type": ["string", "null"]},
                "cost": ref("Cost")}},
    "Cost": {"type": "object", "required": ["estimated_usd", "currency", "prices_taken", "lines"],
             "description": "the cloud the job used so far (counted as it ran), at the operator's price table's "
                            "list prices, before free tiers and monthly fees",
             "properties": {
                 "estimated_usd": {"type": "number"}, "currency": {"type": "string"},
                 "prices_taken": {"type": "string", "description": "the day the table's prices were taken"},
                 "lines": {"type": "array", "items": {
                     "type": "object", "required": ["item", "quantity", "unit", "usd"], "properties": {
                         "item": {"type": "string"}, "quantity": {"type": "number"}, "unit": {"type": "string"},
                         "usd": {"type": "number"}}}}}},
    "JobList": {"type": "object", "required": ["jobs", "page", "per_page", "total"], "properties": {
        "jobs": {"type": "array", "items": ref("Job")}, "page": {"type": "integer"},
        "per_page": {"type": "integer"}, "total": {"type": "integer"}}},
    "Recipient": {"type": "object", "required": ["email", "status", "error", "sent_at"], "properties": {
        "id": {"type": "integer"}, "email": {"type": "string"},
        "status": {"enum": [s.value for s in RecipientStatus]}, "error": {"type": ["string", "null"]},
        "sent_at": STAMP}, "description": "never the recipient's data"},
    "RecipientList": {"type": "object", "required": ["recipients", "page", "per_page"], "properties": {
        "recipients": {"type": "array", "items": ref("Recipient")}, "page": {"type": "integer"},
        "per_page": {"type": "integer"}}},
    "NewJob": {"type": "object", "required": ["type", "recipients"], "properties": {
        "type": {"enum": list(JOB_TYPES)},
        "subject": {"type": "string"}, "body_text": {"type": "string"}, "body_html": {"type": "string"},
        "template": {"type": "string", "description": "a stored template's name, instead of subject/body_*"},
        "recipients": {"type": "array", "minItems": 1, "items": {"type": "object", "properties": {
            "email": {"type": "string"}, "data": {"type": "object"}}}},
        "send_at": STAMP, "certificate_delivery": {"enum": ["link", "attachment"]},
        "on_missing": {"enum": list(fields.ON_MISSING), "default": "reject", "description":
                       "a recipient whose data lacks a field the mail needs (a variable the template uses without "
                       "a default, or its type's required field: the `Fields_<type>` schemas): `reject` "
                       "answers 400 `missing_fields` naming the fields and the first recipients, and stores "
                       "nothing; `fail_recipient` keeps such a recipient as failed (`missing_fields: <names>`) "
                       "and sends the rest. Nothing is ever sent with a blank."}}},
    "Event": {"type": "object", "required": ["event", "email"], "properties": {
        "event": {"enum": ["user_created", "license_allocated", "reengagement_campaign_triggered",
                           "course_completed"]},
        "email": {"type": "string"}, "data": {"type": "object"}, "occurred_at": STAMP}},
    "EventAccepted": {"type": "object", "required": ["accepted", "mode", "job_id"], "properties": {
        "accepted": {"const": True}, "mode": {"enum": ["bulk", "single"]},
        "job_id": {"type": ["integer", "null"]}}},
    "Template": {"type": "object", "required": ["name", "type", "subject", "body_text", "body_html"], "properties": {
        "name": {"type": "string"}, "type": {"enum": [*JOB_TYPES, None]}, "subject": {"type": "string"},
        "body_text": {"type": ["string", "null"]}, "body_html": {"type": ["string", "null"]},
        "created_at": STAMP, "updated_at": STAMP}},
    "TemplateInput": {"type": "object", "required": ["subject"], "additionalProperties": False, "properties": {
        "type": {"enum": [*JOB_TYPES, None]}, "subject": {"type": "string"},
        "body_text": {"type": ["string", "null"]}, "body_html": {"type": ["string", "null"]},
        "name": {"type": "string", "description": "ignored: the name is the path's"}},
        "description": "Jinja2 (sandboxed) in every part; body_text or body_html is required"},
    "TemplateSaved": {"allOf": [ref("Template"), {"type": "object", "required": ["warnings"], "properties": {
        "warnings": {"type": "array", "items": {"type": "string"},
                     "description": "names the template's type does not know, in words (`Fields_<type>`): "
                                    "saved, but every recipient's data must carry them"}}}]},
    "TemplateList": {"type": "object", "required": ["templates"], "properties": {
        "templates": {"type": "array", "items": ref("Template")}}},
    "Verification": {"type": "object", "required": ["code", "status", "valid", "holder", "course", "issued_on"],
                     "properties": {
                         "code": {"type": "string"}, "status": {"type": "string"}, "valid": {"type": "boolean"},
                         "holder": {"type": "string"}, "course": {"type": "string"},
                         "issued_on": {"type": ["string", "null"], "format": "date"},
                         "expires_on": {"type": ["string", "null"], "format": "date"},
                         "revoked_on": {"type": ["string", "null"], "format": "date"}}},
}


def _fields_schema(job_type: str, spec: fields.TypeFields) -> dict:
    """One job type's recipient data: what it must carry, what it may, what the service adds."""
    names = (*spec.required, *spec.template_must_use, *spec.optional, *spec.alternatives_flat)
    properties = {name: {"description": fields.DESCRIPTIONS.get(name, name)} for name in dict.fromkeys(names)}
    words = [f"The `data` of a `{job_type}` recipient."]
    if spec.required:
        stand_ins = "".join(f" (instead of `{k}`: {' or '.join(f'`{a}`' for a in v)})"
                            for k, v in spec.alternatives.items())
        words.append(f"Every recipient carries {', '.join(f'`{n}`' for n in spec.required)}, not blank{stand_ins}.")
    if spec.template_must_use:
        words.append(f"A stored template of this type must use {', '.join(f'`{n}`' for n in spec.template_must_use)}"
                     "; where the template uses it, it must not be blank.")
    if spec.service:
        words.append(f"The service adds {', '.join(f'`{n}`' for n in spec.service)} itself.")
    words.append("Any other name is the LMS's own." if spec.open else
                 "Another name is a warning when a template is saved; every recipient must then carry it.")
    return {"type": "object", "description": " ".join(words),
            "required": [n for n in spec.required if n not in spec.alternatives],
            "properties": properties, "x-added-by-the-service": list(spec.service),
            "x-template-must-use": list(spec.template_must_use)}


SCHEMAS.update({f"Fields_{t}": _fields_schema(str(t), spec) for t, spec in fields.TYPES.items()})


def op(summary: str, responses: dict, *, params=(), request=None, public: bool = False, op_id: str) -> dict:
    found = {"summary": summary, "operationId": op_id, "responses": {**responses, **ERRORS}}
    if params:
        found["parameters"] = list(params)
    if request:
        found["requestBody"] = {"required": True, "content": {JSON: {"schema": request}}}
    if public:
        found["security"] = []
        found["responses"].pop("401")
    return found


DOCUMENT = {
    "openapi": "3.1.0",
    "info": {"title": "ManiReports Cloud Offload — LMS API", "version": "1",
             "description": "Bulk email and certificates for a Moodle/IOMAD site. JSON over HTTP; every call but "
                            "`/verify` and this document takes `Authorization: Bearer <company api_token>`. "
                            "Another company's object is a 404."},
    "servers": [{"url": "/api/v1"}],
    "security": [{"bearer": []}],
    "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}, "schemas": SCHEMAS},
    "paths": {
        "/jobs": {
            "post": op("Create a job and queue it (each recipient's data: `Fields_<type>`)",
                       {"202": body(ref("Job"), "the job (the first one again for a repeated Idempotency-Key)"),
                        "400": error("a bad request: `missing_fields` (details: `fields`, `count`, `recipients`: "
                                     "the first ones' `index`, `email` and `fields`), `template_error`, ..."),
                        "503": error("`renderer_unavailable`: templates cannot be rendered right now (Retry-After)")},
                       params=[{"name": "Idempotency-Key", "in": "header", "schema": {"type": "string",
                                                                                     "maxLength": 255}}],
                       request=ref("NewJob"), op_id="createJob"),
            "get": op("The company's jobs, newest first", {"200": body(ref("JobList"), "a page of jobs")},
                      params=[{"name": "status", "in": "query", "schema": {"type": "string"}},
                              {"name": "type", "in": "query", "schema": {"enum": list(JOB_TYPES)}}, PAGE],
                      op_id="listJobs")},
        "/jobs/{job_id}": {"get": op("A job", {"200": body(ref("Job"), "the job")}, params=[JOB_ID],
                                     op_id="getJob")},
        "/jobs/{job_id}/recipients": {"get": op(
            "A job's recipients", {"200": body(ref("RecipientList"), "a page of 500 recipients")},
            params=[JOB_ID, {"name": "status", "in": "query", "schema": {"enum": [s.value for s in RecipientStatus]}},
                    PAGE], op_id="listRecipients")},
        "/jobs/{job_id}/retry": {"post": op(
            "Re-queue the failed recipients of a finished job",
            {"202": body({"allOf": [ref("Job"), {"type": "object", "required": ["retried"],
                                                 "properties": {"retried": {"type": "integer"}}}]},
                         "the job and how many recipients were re-queued")},
            params=[JOB_ID], op_id="retryJob")},
        "/jobs/{job_id}/cancel": {"post": op("Stop a job", {"202": body(ref("Job"), "the job")}, params=[JOB_ID],
                                             op_id="cancelJob")},
        "/jobs/{job_id}/resume": {"post": op("Resume a paused job", {"202": body(ref("Job"), "the job")},
                                             params=[JOB_ID], op_id="resumeJob")},
        "/events": {"post": op("One LMS event (stored before the 202, held in its window, then one bulk job or "
                                  "one job each)",
                               {"202": body(ref("EventAccepted"), "accepted")}, request=ref("Event"),
                               op_id="postEvent")},
        "/templates": {"get": op("The company's stored email templates",
                                 {"200": body(ref("TemplateList"), "every template, by name")},
                                 op_id="listTemplates")},
        "/templates/{name}": {
            "get": op("A stored template", {"200": body(ref("Template"), "the template")}, params=[TEMPLATE_NAME],
                      op_id="getTemplate"),
            "put": op("Create or replace a template (template errors, and a template that does not use a field "
                      "its type must deliver (`Fields_<type>`), are a 400 with the reason)",
                      {"200": body(ref("TemplateSaved"), "replaced"), "201": body(ref("TemplateSaved"), "created")},
                      params=[TEMPLATE_NAME], request=ref("TemplateInput"), op_id="putTemplate"),
            "delete": op("Delete a template", {"204": {"description": "deleted"}}, params=[TEMPLATE_NAME],
                         op_id="deleteTemplate")},
        "/verify/{code}": {"get": op("Verify a certificate by its code",
                                     {"200": body(ref("Verification"), "what the code certifies")},
                                     params=[{"name": "code", "in": "path", "required": True,
                                              "schema": {"type": "string"}}], public=True, op_id="verify")},
        "/openapi.json": {"get": op("This document", {"200": body({"type": "object"}, "OpenAPI 3.1")},
                                    public=True, op_id="openapi")},
    },
}


#: the viewer's groups: each operation under its path's first segment
TAGS = {"jobs": "Jobs", "events": "Events", "templates": "Templates", "verify": "Certificates",
        "openapi.json": "This document"}


def tagged(document: dict) -> dict:
    """``document`` with each operation tagged by its path's first segment."""
    for path, methods in document["paths"].items():
        for operation in methods.values():
            operation["tags"] = [TAGS[path.strip("/").split("/")[0]]]
    document["tags"] = [{"name": name} for name in TAGS.values()]
    return document


tagged(DOCUMENT)


@bp.get("/openapi.json")
def openapi_json():
    return jsonify(DOCUMENT)


def viewer_version() -> str:
    """The vendored Swagger UI's version (``static/vendor/swagger-ui/VERSION``)."""
    with open(os.path.join(current_app.static_folder, "vendor", "swagger-ui", "VERSION"), encoding="ascii") as fh:
        return fh.read().strip()


@bp.get("/docs")
def docs():
    """The document in Swagger UI: every path and method, parameters, bodies and responses, ``$ref`` resolved."""
    return render_template("api/docs.html", doc=DOCUMENT, viewer_version=viewer_version())
