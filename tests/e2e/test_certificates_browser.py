"""The certificate template editor in headless Chromium: typing in the HTML updates
the live preview (a PNG the preview endpoint renders), and the template saves."""
from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect
from sqlalchemy import select

from core.certificate_render import new_verification_code
from core.db import db
from core.models import Certificate, CertificateTemplate, utcnow
from tests.support.browser import ARTIFACTS

pytestmark = [pytest.mark.browser]
PASSWORD = "correct horse battery"


def test_live_preview_follows_the_html(live_server, browser, company, make_user):
    make_user("designer@acme.test", company_id=company.id)
    page = browser.new_page(viewport={"width": 1366, "height": 900})
    page.goto(f"{live_server}/login")
    page.fill("input[name=email]", "designer@acme.test")
    page.fill("input[name=password]", PASSWORD)
    page.click("button")
    page.wait_for_url(re.compile(r".*/admin/$"))
    page.goto(f"{live_server}/admin/certificate-templates/new")
    preview = page.locator("#certificate-preview")
    # locator assertions, not string predicates: the dashboard's CSP has no 'unsafe-eval'
    expect(preview).to_have_attribute("src", re.compile(r"^blob:"))
    first = preview.get_attribute("src")
    page.fill("input[name=name]", "Browser made")
    html = page.input_value("textarea[name=html]")
    page.fill("textarea[name=html]", html.replace("Certificate of Completion", "Certificate of Excellence"))
    expect(preview).not_to_have_attribute("src", first)
    expect(page.locator("#certificate-preview-status")).to_have_text("Up to date")
    assert preview.evaluate("img => img.naturalWidth") > 600
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "certificate_template_editor.png"), full_page=False)
    page.click("text=Save")
    page.wait_for_url(re.compile(r".*/admin/certificate-templates/$"))
    tpl = db.session.execute(select(CertificateTemplate)).scalar_one()
    assert tpl.name == "Browser made" and "Certificate of Excellence" in tpl.html
    page.close()


def test_the_verification_page_runs_no_script(live_server, browser, company):
    cert = Certificate(company_id=company.id, code=new_verification_code(), course_name="Fire Safety",
                       learner_name="<img src=x onerror=\"document.title='pwned'\"><script>document.title='pwned'"
                                    "</script>Ann", issued_at=utcnow())
    db.session.add(cert)
    db.session.commit()
    page = browser.new_page(viewport={"width": 800, "height": 600})
    page.goto(f"{live_server}/verify/{cert.code}")
    assert page.title() == "Certificate verification"
    assert "<script>document.title='pwned'</script>Ann" in page.inner_text("dd")
    page.screenshot(path=str(ARTIFACTS / "certificate_verify.png"))
    page.close()
