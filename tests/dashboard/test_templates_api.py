"""The templates API (CONTRACT §8) and the OpenAPI document of the LMS API,
checked against the running app."""
from __future__ import annotations

import re
import threading

import pytest
import requests
from openapi_spec_validator import validate as validate_spec
from werkzeug.serving import make_server

from tests.support import openapi
from tests.support.servers import free_port

WELCOME = {"type": "csv_import", "subject": "Welcome {{ firstname }}",
           "body_text": "Hi {{ firstname }}, your password: {{ password }}", "body_html": "<p>Hi {{ firstname }}</p>"}


def test_put_get_list_delete(client, company):
    url = "/api/v1/templates/welcome"
    created = client.put(url, json=WELCOME, headers=company.auth)
    assert created.status_code == 201 and created.json["subject"] == WELCOME["subject"]
    replaced = client.put(url, json={**WELCOME, "subject": "Hello {{ firstname }}"}, headers=company.auth)
    assert replaced.status_code == 200 and replaced.json["subject"] == "Hello {{ firstname }}"
    assert client.get(url, headers=company.auth).json["type"] == "csv_import"
    assert [t["name"] for t in client.get("/api/v1/templates", headers=company.auth).json["templates"]] == ["welcome"]
    job = client.post("/api/v1/jobs", json={"type": "csv_import", "template": "welcome", "recipients": [
        {"email": "ann@example.com", "data": {"firstname": "Ann", "password": "pw-1"}}]}, headers=company.auth)
    assert job.status_code == 202
    assert client.delete(url, headers=company.auth).status_code == 204
    assert client.get(url, headers=company.auth).status_code == 404
    assert client.delete(url, headers=company.auth).status_code == 404


@pytest.mark.parametrize("payload, code, message", [
    ({**WELCOME, "subject": "Hi {{ firstname"}, "template_error", "subject: template error"),
    ({**WELCOME, "body_html": "{% if %}"}, "template_error", "body_html"),
    ({"type": "csv_import", "subject": "Hi"}, "template_error", "body_text or body_html is required"),
    ({**WELCOME, "type": "spam"}, "invalid_type", "type must be one of"),
    ({**WELCOME, "colour": "red"}, "invalid_field", "unknown field(s): colour"),
    ([1, 2], "invalid_json", "JSON object"),
])
def test_template_errors_are_400_with_the_reason(client, company, payload, code, message):
    resp = client.put("/api/v1/templates/broken", json=payload, headers=company.auth)
    assert resp.status_code == 400 and resp.json["error"] == code and message in resp.json["message"]
    assert client.get("/api/v1/templates/broken", headers=company.auth).status_code == 404


def test_another_companys_template_is_404(client, company, make_company):
    other = make_company("Other Co")
    assert client.put("/api/v1/templates/mine", json=WELCOME, headers=other.auth).status_code == 201
    assert client.get("/api/v1/templates/mine", headers=company.auth).status_code == 404
    assert client.delete("/api/v1/templates/mine", headers=company.auth).status_code == 404
    assert client.put("/api/v1/templates/mine", json=WELCOME, headers=company.auth).status_code == 201  # its own
    assert client.get("/api/v1/templates", headers=company.auth).json["templates"][0]["subject"] == WELCOME["subject"]
    assert client.get("/api/v1/templates/mine", headers={"Authorization": "Bearer nope"}).status_code == 401


def test_the_checker_refuses_a_response_the_document_does_not_describe():
    with pytest.raises(AssertionError, match="required property"):
        openapi.validate("GET", "/api/v1/templates/x", 200, "application/json", b'{"name": "x"}')
    with pytest.raises(AssertionError, match="not documented"):
        openapi.validate("GET", "/api/v1/templates", 299, "application/json", b"{}")
    with pytest.raises(AssertionError, match="not in the OpenAPI document"):
        openapi.validate("GET", "/api/v1/nowhere", 200, "application/json", b"{}")


@pytest.fixture
def served(app):
    """The app on a real port (werkzeug's server in a thread)."""
    server = make_server("127.0.0.1", free_port(), app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    thread.join(timeout=5)


def call(base: str, method: str, path: str, **kwargs) -> requests.Response:
    resp = requests.request(method, base + path, timeout=30, **kwargs)
    openapi.validate(method, path, resp.status_code, resp.headers.get("Content-Type"), resp.content)
    return resp


def test_the_document_is_valid_openapi_31_and_true_of_the_running_app(served, company):
    doc = requests.get(served + "/api/v1/openapi.json", timeout=30).json()
    validate_spec(doc)
    assert doc["openapi"].startswith("3.1") and "/templates/{name}" in doc["paths"]
    auth = company.auth
    assert call(served, "PUT", "/api/v1/templates/welcome", json=WELCOME, headers=auth).status_code == 201
    assert call(served, "GET", "/api/v1/templates", headers=auth).status_code == 200
    job = call(served, "POST", "/api/v1/jobs", json={"type": "csv_import", "template": "welcome", "recipients": [
        {"email": "ann@example.com", "data": {"firstname": "Ann", "password": "pw"}}, {"email": "bad address"}]},
        headers=auth).json()
    missing = call(served, "POST", "/api/v1/jobs", json={"type": "csv_import", "template": "welcome",
                                                          "recipients": [{"email": "bo@example.com"}]}, headers=auth)
    assert missing.status_code == 400 and missing.json()["error"] == "missing_fields"
    assert call(served, "GET", f"/api/v1/jobs/{job['id']}", headers=auth).status_code == 200
    assert call(served, "GET", "/api/v1/jobs?type=csv_import", headers=auth).status_code == 200
    assert call(served, "GET", f"/api/v1/jobs/{job['id']}/recipients?status=failed", headers=auth).status_code == 200
    assert call(served, "POST", f"/api/v1/jobs/{job['id']}/cancel", headers=auth).status_code == 202
    assert call(served, "POST", f"/api/v1/jobs/{job['id']}/resume", headers=auth).status_code == 409
    assert call(served, "GET", "/api/v1/jobs/999999", headers=auth).status_code == 404
    assert call(served, "GET", "/api/v1/jobs").status_code == 401
    assert call(served, "POST", "/api/v1/jobs", data="nope", headers=auth).status_code == 400
    assert call(served, "GET", "/api/v1/verify/NOSUCHCODE").status_code == 404
    page = requests.get(served + "/api/v1/docs", timeout=30)
    scripts = re.findall(r'<script[^>]*src="([^"]+)"', page.text)
    assert page.status_code == 200 and any("vendor/swagger-ui/swagger-ui-bundle.js" in s for s in scripts)
    assert all(s.startswith("/static/") for s in scripts)  # served from the package, no CDN
