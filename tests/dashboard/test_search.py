"""Search by email, in keyset pages: a job's recipients (the job page), the Outbox
and the suppression list. Each finds an address by any part of it, in any case,
pages on from the last row shown (never an offset), and stays in its company."""
from __future__ import annotations

import os
import re

from core.db import db
from core.models import Suppression
from core.recipient_list import page
from dashboard.admin.suppressions import PAGE_SIZE as SUPPRESSION_PAGE
from tests.support.app import AuthActions


def _job(client, company, emails) -> int:
    resp = client.post("/api/v1/jobs", headers=company.auth, json={
        "type": "notification", "subject": "Hi", "body_text": "x", "recipients": [{"email": e} for e in emails]})
    assert resp.status_code == 202
    return resp.get_json()["id"]


def test_a_jobs_recipients_by_part_of_the_address_in_keyset_pages(client, make_company, make_user):
    company = make_company("Search Co", provider="smtp", sender="noreply@search.test")
    other = make_company("Other Co", provider="smtp", sender="noreply@other.test")
    emails = [f"learner{i:03d}@school.test" for i in range(120)] + ["Ann.Smith@Example.com", "bad address"]
    job_id = _job(client, company, emails)
    other_job = _job(client, other, ["ann.smith@example.com"])

    first = page(company.id, job_id)
    assert len(first.rows) == 50 and first.next_after == first.rows[-1].id
    second = page(company.id, job_id, after=first.next_after)
    assert second.rows[0].id > first.rows[-1].id
    assert page(company.id, job_id, email="ANN.smith").rows[0].email == "Ann.Smith@Example.com"
    found = page(company.id, job_id, email="learner11")
    assert [r.email for r in found.rows] == [f"learner11{i}@school.test" for i in range(10)]
    assert page(company.id, job_id, email="%").rows == []  # wildcards are text
    assert [r.email for r in page(company.id, job_id, statuses=("failed",)).rows] == ["bad address"]
    assert page(company.id, other_job, email="ann").rows == []  # another company's job: nothing

    make_user("m@search.test", company_id=company.id)
    AuthActions(client).login("m@search.test", "correct horse battery")
    html = client.get(f"/admin/jobs/{job_id}/?q=smith").get_data(as_text=True)
    table = html[html.index('id="recipients-table"'):]
    assert "Ann.Smith@Example.com" in table and "learner001" not in table
    html = client.get(f"/admin/jobs/{job_id}/").get_data(as_text=True)
    after = re.search(r'id="recipients-next" href="[^"]*after=(\d+)', html).group(1)
    later = client.get(f"/admin/jobs/{job_id}/?after={after}").get_data(as_text=True)
    assert "learner050@school.test" in later and "learner049@school.test" not in later.split('id="recipients-table"')[1]
    assert client.get(f"/admin/jobs/{job_id}/?after=99999999999999999999999").status_code == 200
    assert client.get(f"/admin/jobs/{other_job}/?q=ann").status_code == 404


def test_suppressions_in_keyset_pages(client, make_company, make_user):
    company = make_company("Supp Co")
    for i in range(SUPPRESSION_PAGE + 5):
        db.session.add(Suppression(company_id=company.id, email=f"gone{i:03d}@example.com"))
    db.session.commit()
    make_user("m@supp.test", company_id=company.id)
    AuthActions(client).login("m@supp.test", "correct horse battery")
    html = client.get("/admin/suppressions/").get_data(as_text=True)
    assert f"gone{SUPPRESSION_PAGE + 4:03d}@example.com" in html and "gone004@example.com" not in html  # newest first
    before = re.search(r'id="suppressions-older" href="[^"]*before=(\d+)', html).group(1)
    older = client.get(f"/admin/suppressions/?before={before}").get_data(as_text=True)
    assert all(f"gone{i:03d}@example.com" in older for i in range(5))
    assert f"gone{SUPPRESSION_PAGE + 4:03d}@example.com" not in older
    found = client.get("/admin/suppressions/?q=GONE01").get_data(as_text=True)
    assert "10 addresses match" in found and "gone011@example.com" in found


def test_the_outbox_by_address_or_subject_in_keyset_pages(app, client, auth, make_user, tmp_path):
    app.instance_path = str(tmp_path)
    folder = tmp_path / "outbox"
    folder.mkdir()
    for i in range(60):  # as the demo's sink writes them: <unix ms>-<random>.eml, envelope first
        (folder / f"{1700000000000 + i:013d}-{i:08x}.eml").write_bytes(
            f"X-Outbox-From: lms@school.test\r\nX-Outbox-To: pupil{i:02d}@school.test\r\n"
            f"Subject: {'Welcome' if i % 2 else 'Reminder'} {i}\r\nFrom: lms@school.test\r\n\r\nHi\r\n".encode())
    make_user("root@service.test", role="admin")
    auth.login("root@service.test", "correct horse battery")
    html = client.get("/admin/outbox/").get_data(as_text=True)
    assert "pupil59@school.test" in html and "pupil09@school.test" not in html
    before = re.search(r'id="outbox-older" href="[^"]*before=([0-9a-f-]+\.eml)', html).group(1)
    older = client.get(f"/admin/outbox/?before={before}").get_data(as_text=True)
    assert "pupil09@school.test" in older and "pupil59@school.test" not in older
    found = client.get("/admin/outbox/?q=PUPIL1").get_data(as_text=True)
    assert {f"pupil1{i}@school.test" for i in range(10)} == set(re.findall(r"pupil1\d@school\.test", found))
    assert "Welcome 11" in client.get("/admin/outbox/?q=welcome").get_data(as_text=True)
    assert len(os.listdir(folder)) == 60  # searching removes nothing
