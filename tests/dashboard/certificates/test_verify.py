"""The public verification page, its JSON twin and the download link."""
from __future__ import annotations

from datetime import timedelta

import pytest

from core.certificate_render import new_verification_code
from core.certificates import find_by_code, revoke
from core.db import db
from core.models import Certificate, utcnow


@pytest.fixture
def issue(company):
    def make(**fields) -> Certificate:
        values = {"company_id": company.id, "code": new_verification_code(), "learner_name": "Ann Okafor",
                  "learner_email": "ann@acme.test", "course_name": "Fire Safety", "grade": "94%",
                  "issued_at": utcnow() - timedelta(days=10), "storage": "s3",
                  "object_key": "certificates/1/1/x.pdf", "checksum": "0" * 64, **fields}
        cert = Certificate(**values)
        db.session.add(cert)
        db.session.commit()
        return cert

    return make


def test_the_page_shows_holder_course_dates_and_validity_only(client, issue):
    cert = issue(expires_at=utcnow() + timedelta(days=365))
    resp = client.get(f"/verify/{cert.code}")
    assert resp.status_code == 200
    html = resp.get_data(as_text=True)
    assert "Valid certificate" in html and "Ann Okafor" in html and "Fire Safety" in html
    assert cert.issued_at.date().isoformat() in html and cert.expires_at.date().isoformat() in html
    for private in ("ann@acme.test", "94%", "certificates/1/1", "0" * 64, "Acme Learning"):
        assert private not in html
    assert "<script" not in html.lower()
    assert "default-src 'none'" in resp.headers["Content-Security-Policy"]
    assert resp.headers["Cache-Control"] == "no-store"


def test_json_twin(client, issue):
    cert = issue()
    resp = client.get(f"/api/v1/verify/{cert.code}")
    assert resp.status_code == 200
    assert resp.json == {"code": cert.code, "status": "valid", "valid": True, "holder": "Ann Okafor",
                         "course": "Fire Safety", "issued_on": cert.issued_at.date().isoformat(),
                         "expires_on": None}


def test_a_script_in_the_name_is_text(client, issue):
    cert = issue(learner_name="<script>alert('x')</script> Mallory", course_name="<b>Course</b>")
    html = client.get(f"/verify/{cert.code}").get_data(as_text=True)
    assert "<script" not in html.lower() and "<b>Course" not in html
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; Mallory" in html
    assert client.get(f"/api/v1/verify/{cert.code}").json["holder"] == "<script>alert('x')</script> Mallory"


def test_revoked_and_expired(client, issue):
    revoked = issue(expires_at=utcnow() + timedelta(days=30))
    assert revoke(revoked, "  issued   in error ") is True
    assert revoked.revoked_reason == "issued in error"
    assert revoke(revoked, "again") is False
    html = client.get(f"/verify/{revoked.code}").get_data(as_text=True)
    assert "Revoked certificate" in html and "Valid certificate" not in html and "issued in error" not in html
    body = client.get(f"/api/v1/verify/{revoked.code}").json
    assert body["status"] == "revoked" and body["valid"] is False and body["revoked_on"]
    expired = issue(expires_at=utcnow() - timedelta(seconds=1))
    assert client.get(f"/api/v1/verify/{expired.code}").json["status"] == "expired"
    assert "Expired certificate" in client.get(f"/verify/{expired.code}").get_data(as_text=True)


@pytest.mark.parametrize("code", ["0" * 20, "ABCDEFGHJKMNPQRSTVWX", "short", "X" * 300, "not-a-code!",
                                  "../../etc/passwd"])
def test_unknown_codes_are_404(client, issue, code):
    issue()
    assert client.get(f"/verify/{code}").status_code == 404
    resp = client.get(f"/api/v1/verify/{code}")
    assert resp.status_code == 404 and resp.json["error"] == "not_found"
    assert client.get(f"/certificates/{code}/download").status_code == 404


def test_lookup_is_by_whole_code(issue):
    cert = issue()
    assert find_by_code(cert.code.lower()) is cert
    assert find_by_code(f" {cert.code} ") is cert
    assert find_by_code(cert.code[:-1]) is None
    assert find_by_code(cert.code + "0") is None
    assert find_by_code("") is None


def test_download_of_a_revoked_certificate_is_gone(client, issue):
    cert = issue()
    revoke(cert, "fraud")
    assert client.get(f"/certificates/{cert.code}/download").status_code == 410


def test_download_when_storage_is_not_configured_is_503(client, issue):
    cert = issue()  # the company has no bucket: no link can be made
    assert client.get(f"/certificates/{cert.code}/download").status_code == 503


def test_rate_limited_per_ip(app, client, issue, set_settings):
    set_settings(verify_rate_per_min=5)
    cert = issue()
    statuses = [client.get(f"/verify/{cert.code}").status_code for _ in range(5)]
    assert statuses == [200] * 5
    assert client.get(f"/verify/{cert.code}").status_code == 429
    assert client.get("/api/v1/verify/00000000000000000000").status_code == 429
    other = client.get(f"/verify/{cert.code}", environ_base={"REMOTE_ADDR": "10.1.2.3"})
    assert other.status_code == 200
