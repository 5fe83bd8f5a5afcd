"""The dashboard's certificates: templates with a live preview and a logo, the list,
revocation, downloads and the ZIP of a job, each closed to other companies."""
from __future__ import annotations

import io
import re
import zipfile
from pathlib import Path

import pytest
from PIL import Image
from sqlalchemy import select

from core.certificate_render import DEFAULT_TEMPLATE_CSS, DEFAULT_TEMPLATE_HTML
from core.db import db
from core.models import AuditLog, Certificate, CertificateTemplate
from tests.support.app import csrf_from, run_worker_burst
from tests.support.certificates import http_get, learners, png, ses_settings, sha256, submit
from tests.support.servers import StubHttpServer

ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"
DEFAULT_WITH_MARKER = DEFAULT_TEMPLATE_HTML.replace("This is to certify that", "This is to certify (custom) that")


@pytest.fixture
def two_companies(make_company, ses, s3_bucket):
    """Acme and Globex, both storing in the same bucket, each with a job of issued certificates."""
    return (make_company("Acme Learning", **ses_settings(ses.url), s3_bucket=s3_bucket),
            make_company("Globex Training", **ses_settings(ses.url), s3_bucket=s3_bucket))


@pytest.fixture
def manager(make_user, auth):
    def login(company):
        make_user(f"manager{company.id}@example.com", company_id=company.id)
        auth.login(f"manager{company.id}@example.com", "correct horse battery")
        return company

    return login


def page_token(client, url: str) -> str:
    return csrf_from(client.get(url).get_data(as_text=True))


def certs_of(company_id: int) -> list[Certificate]:
    db.session.expire_all()
    return list(db.session.execute(select(Certificate).where(Certificate.company_id == company_id)
                                   .order_by(Certificate.id)).scalars())


def issued_jobs(app, client, acme, globex, n: int = 4) -> tuple[int, int]:
    a = submit(client, acme, learners(n, "a"))
    g = submit(client, globex, learners(n, "g"))
    run_worker_burst(app)
    return a, g


def test_another_companys_certificates_templates_and_jobs_are_404(app, client, two_companies, manager):
    acme, globex = two_companies
    _, globex_job = issued_jobs(app, client, acme, globex, n=2)
    theirs = certs_of(globex.id)[0]
    tpl = CertificateTemplate(company_id=globex.id, name="Theirs", html="<p>{{ learner_name }}</p>")
    db.session.add(tpl)
    db.session.commit()
    manager(acme)
    token = page_token(client, "/admin/certificates/")
    for url in (f"/admin/certificates/{theirs.id}/", f"/admin/certificates/{theirs.id}/download",
                f"/admin/certificates/job/{globex_job}.zip", f"/admin/certificate-templates/{tpl.id}/edit",
                f"/admin/certificate-templates/{tpl.id}/preview.png"):
        assert client.get(url).status_code == 404, url
    assert client.post(f"/admin/certificates/{theirs.id}/revoke",
                       data={"reason": "x", "csrf_token": token}).status_code == 404
    assert client.post(f"/admin/certificate-templates/{tpl.id}/delete", data={"csrf_token": token}).status_code == 404
    assert client.post("/admin/certificate-templates/preview",
                       data={"template_id": tpl.id, "html": "<p>x</p>", "csrf_token": token}).status_code == 404
    listing = client.get("/admin/certificates/").get_data(as_text=True)
    assert theirs.code not in listing and "Learner G" not in listing
    assert listing.count("Learner A ") == 2
    db.session.refresh(theirs)
    assert theirs.revoked_at is None


def test_zip_of_a_job_holds_its_pdfs_and_nothing_else(app, client, two_companies, manager):
    acme, globex = two_companies
    acme_job, _ = issued_jobs(app, client, acme, globex)
    manager(acme)
    resp = client.get(f"/admin/certificates/job/{acme_job}.zip")
    assert resp.status_code == 200 and resp.mimetype == "application/zip"
    assert resp.is_streamed
    archive = zipfile.ZipFile(io.BytesIO(resp.get_data()))
    assert archive.testzip() is None
    mine = {c.code: c for c in certs_of(acme.id)}
    names = archive.namelist()
    assert len(names) == len(mine) == 4
    for name in names:
        code = re.fullmatch(r"Learner_A_\d{3}-([0-9A-Z]{20})\.pdf", name).group(1)
        assert sha256(archive.read(name)) == mine[code].checksum
    globex_codes = {c.code for c in certs_of(globex.id)}
    assert not any(code in name for name in names for code in globex_codes)
    assert db.session.execute(select(AuditLog).where(AuditLog.action == "certificates_downloaded")).scalar()


def test_revoke_needs_a_reason_and_csrf_and_is_audited(app, client, two_companies, manager):
    acme, globex = two_companies
    issued_jobs(app, client, acme, globex, n=1)
    manager(acme)
    (cert,) = certs_of(acme.id)
    details = client.get(f"/admin/certificates/{cert.id}/")
    assert details.status_code == 200 and cert.code in details.get_data(as_text=True)
    token = csrf_from(details.get_data(as_text=True))
    assert client.post(f"/admin/certificates/{cert.id}/revoke", data={"reason": "fraud"}).status_code == 400
    client.post(f"/admin/certificates/{cert.id}/revoke", data={"reason": "  ", "csrf_token": token})
    db.session.refresh(cert)
    assert cert.revoked_at is None
    resp = client.post(f"/admin/certificates/{cert.id}/revoke", data={"reason": "Exam fraud", "csrf_token": token})
    assert resp.status_code == 302
    db.session.refresh(cert)
    assert cert.revoked_at is not None and cert.revoked_reason == "Exam fraud"
    entry = db.session.execute(select(AuditLog).where(AuditLog.action == "certificate_revoked")).scalar_one()
    assert (entry.company_id, entry.object_id, entry.actor) == (acme.id, str(cert.id), f"manager{acme.id}@example.com")
    assert "Revoked certificate" in client.get(f"/verify/{cert.code}").get_data(as_text=True)
    assert "revoked" in client.get("/admin/certificates/?status=revoked").get_data(as_text=True)


def test_dashboard_download_redirects_to_the_pdf(app, client, two_companies, manager):
    acme, globex = two_companies
    issued_jobs(app, client, acme, globex, n=1)
    manager(acme)
    (cert,) = certs_of(acme.id)
    resp = client.get(f"/admin/certificates/{cert.id}/download")
    assert resp.status_code == 302
    status, pdf = http_get(resp.headers["Location"])
    assert status == 200 and sha256(pdf) == cert.checksum


def test_admins_see_every_company(app, client, two_companies, make_user, auth):
    acme, globex = two_companies
    issued_jobs(app, client, acme, globex, n=1)
    make_user("root@example.com", role="admin")
    auth.login("root@example.com", "correct horse battery")
    listing = client.get("/admin/certificates/").get_data(as_text=True)
    assert "Acme Learning" in listing and "Globex Training" in listing


def test_pages_need_a_login(client):
    assert client.get("/admin/certificates/").status_code == 302
    assert client.post("/admin/certificate-templates/preview", data={"html": "x"}).status_code in (302, 400)


# -- templates -------------------------------------------------------------------


def test_create_edit_and_preview_a_template_with_a_logo(client, company, manager):
    manager(company)
    token = page_token(client, "/admin/certificate-templates/new")
    form = client.get("/admin/certificate-templates/new").get_data(as_text=True)
    assert "Certificate of Completion" in form  # starts from the default design
    resp = client.post("/admin/certificate-templates/new", content_type="multipart/form-data", data={
        "csrf_token": token, "name": "Gold", "html": DEFAULT_WITH_MARKER, "css": DEFAULT_TEMPLATE_CSS,
        "logo": (io.BytesIO(png("#b8912f")), "logo.png")})
    assert resp.status_code == 302, resp.get_data(as_text=True)
    tpl = db.session.execute(select(CertificateTemplate)).scalar_one()
    assert (tpl.company_id, tpl.name) == (company.id, "Gold") and tpl.logo.startswith(b"\x89PNG")
    listing = client.get("/admin/certificate-templates/")
    assert listing.status_code == 200 and f"/admin/certificate-templates/{tpl.id}/preview.png" in listing.text
    preview = client.get(f"/admin/certificate-templates/{tpl.id}/preview.png")
    assert preview.status_code == 200 and preview.mimetype == "image/png"
    image = Image.open(io.BytesIO(preview.data))
    assert image.width > image.height  # A4 landscape
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "certificate_preview.png").write_bytes(preview.data)
    edit = client.get(f"/admin/certificate-templates/{tpl.id}/edit").get_data(as_text=True)
    resp = client.post(f"/admin/certificate-templates/{tpl.id}/edit", data={
        "csrf_token": csrf_from(edit), "name": "Gold 2", "html": tpl.html, "css": "p { color: #333; }",
        "remove_logo": "y"})
    assert resp.status_code == 302
    db.session.refresh(tpl)
    assert tpl.name == "Gold 2" and tpl.logo is None and tpl.css == "p { color: #333; }"
    actions = db.session.execute(select(AuditLog.action)).scalars().all()
    assert actions.count("certificate_template_saved") == 2


def test_a_template_that_does_not_render_is_refused(client, company, manager):
    manager(company)
    token = page_token(client, "/admin/certificate-templates/new")
    resp = client.post("/admin/certificate-templates/new", data={
        "csrf_token": token, "name": "Broken", "html": "<p>{{ learner_name </p>"})
    assert resp.status_code == 400 and "template does not compile" in resp.get_data(as_text=True)
    resp = client.post("/admin/certificate-templates/new", content_type="multipart/form-data", data={
        "csrf_token": token, "name": "Bad logo", "html": "<p>x</p>",
        "logo": (io.BytesIO(b"<svg onload=alert(1)>"), "logo.svg")})
    assert "logo must be a PNG, JPEG or GIF image" in resp.get_data(as_text=True)
    assert db.session.execute(select(CertificateTemplate)).first() is None
    preview = client.post("/admin/certificate-templates/preview",
                          data={"csrf_token": token, "html": "{% for %}", "css": ""})
    assert preview.status_code == 400 and preview.mimetype == "text/plain"


def test_live_preview_needs_csrf(client, company, manager):
    manager(company)
    resp = client.post("/admin/certificate-templates/preview", data={"html": DEFAULT_WITH_MARKER})
    assert resp.status_code == 400 and resp.mimetype != "image/png"


def test_live_preview_fetches_nothing_from_files_or_the_web(client, company, manager, tmp_path):
    """file:// and http:// images in a template are never read: the red image on disk does not
    show in the preview, and the web server gets no request."""
    red = tmp_path / "red.png"
    red.write_bytes(png("red", (400, 300)))
    with StubHttpServer(lambda req: (200, {"Content-Type": "image/png"}, png("red", (400, 300)))) as web:
        html = (f'<html><body><p>Hello {{{{ learner_name }}}}</p>'
                f'<img src="file://{red}" width="400" height="300">'
                f'<img src="file:///etc/passwd" width="40" height="40">'
                f'<img src="{web.url}/logo.png" width="400" height="300">'
                f'<link rel="stylesheet" href="{web.url}/style.css"></body></html>')
        css = f'@import url("{web.url}/more.css"); body {{ background: url("file://{red}"); }}'
        manager(company)
        token = page_token(client, "/admin/certificate-templates/new")
        resp = client.post("/admin/certificate-templates/preview", data={"csrf_token": token, "html": html,
                                                                          "css": css})
        assert resp.status_code == 200 and resp.mimetype == "image/png"
        assert web.requests == []
    image = Image.open(io.BytesIO(resp.data)).convert("RGB")
    reds = sum(1 for r, g, b in image.getdata() if r > 200 and g < 60 and b < 60)
    assert reds == 0


def test_zip_names_what_storage_lost(app, client, two_companies, manager):
    from tests.support.certificates import client as s3_client

    acme, globex = two_companies
    acme_job, _ = issued_jobs(app, client, acme, globex, n=2)
    lost, kept = certs_of(acme.id)
    bucket = acme.company.settings.get_setting("s3_bucket")
    s3_client().delete_object(Bucket=bucket, Key=lost.object_key)
    manager(acme)
    archive = zipfile.ZipFile(io.BytesIO(client.get(f"/admin/certificates/job/{acme_job}.zip").get_data()))
    names = archive.namelist()
    assert len(names) == 2 and kept.code in names[0] and names[1] == "missing.txt"
    assert lost.code in archive.read("missing.txt").decode()


def test_an_admin_chooses_the_company_of_a_new_template(client, make_company, make_user, auth):
    make_company("Acme")
    globex = make_company("Globex")
    make_user("root@example.com", role="admin")
    auth.login("root@example.com", "correct horse battery")
    page = client.get("/admin/certificate-templates/new").get_data(as_text=True)
    assert "Globex" in page and "Acme" in page
    resp = client.post("/admin/certificate-templates/new", data={
        "csrf_token": csrf_from(page), "company_id": str(globex.id), "name": "Globex default",
        "html": DEFAULT_TEMPLATE_HTML, "css": DEFAULT_TEMPLATE_CSS})
    assert resp.status_code == 302
    tpl = db.session.execute(select(CertificateTemplate)).scalar_one()
    assert tpl.company_id == globex.id
    assert "Globex default" in client.get("/admin/certificate-templates/").get_data(as_text=True)
