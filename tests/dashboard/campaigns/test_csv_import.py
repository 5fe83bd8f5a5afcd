"""CSV import in the dashboard: upload, map, preview (masked), confirm; bad rows reported."""
from __future__ import annotations

import io
import re

import pytest
from sqlalchemy import select
from werkzeug.test import EnvironBuilder
from werkzeug.wrappers import Request

from core import companies
from core.db import db
from core.models import Job, Recipient
from core.queue import connection
from dashboard.admin.campaigns import InMemoryFormDataParser
from tests.support.app import csrf_from, run_worker_burst
from tests.support.events import make_template
from tests.support.servers import SmtpSink

BAD_LINES = {  # line number in the file (header = line 1) → (row text, reason shown)
    12: ("not-an-address,Bad,Row,pw-x", "invalid email address"),
    100: (",No,Email,pw-y", "no email address"),
    101: ("user5@example.com,Dup,Licate,pw-z", "duplicate of line 7"),
    400: ("only,three,columns", "expected 4 columns, found 3"),
    512: ("a@b@example.com,Two,Ats,pw-w", "invalid email address"),
    800: ("x@example.com,Too,Many,pw,extra", "expected 4 columns, found 5"),
    1001: ('"evil@example.com\r\nBcc: x@example.com",Inj,Ect,pw-v', "invalid email address"),  # 2 lines
}


def big_csv() -> tuple[bytes, list[str]]:
    """1,000 data rows (lines 2-1001); 7 of them bad (the one with CR/LF spans two lines)."""
    lines = ["email,firstname,lastname,password"]
    passwords = []
    n = 0
    for line in range(2, 1002):
        if line in BAD_LINES:
            lines.append(BAD_LINES[line][0])
            continue
        passwords.append(f"Pw!{n:04d}xyz")
        lines.append(f"user{n}@example.com,First{n},Last{n},{passwords[-1]}")
        n += 1
    return ("\n".join(lines) + "\n").encode(), passwords


@pytest.fixture
def manager(make_company, make_user, auth):
    company = make_company("Import Co", sender="noreply@import.test", provider="smtp")
    tpl = make_template(company.id, "csv_import")
    user, password = make_user("boss@import.test", "manager", company.id)
    auth.login(user.email, password)
    return company, tpl


def upload(client, tpl_id: int, data: bytes, token: str | None = None, path="/admin/campaigns/import"):
    if token is None:
        token = csrf_from(client.get(path).get_data(as_text=True))
    return client.post(path, data={"csrf_token": token, "template_id": str(tpl_id),
                                   "file": (io.BytesIO(data), "users.csv")}, content_type="multipart/form-data")


def test_1000_rows_with_7_bad_make_a_job_of_993_and_a_report_of_7(client, manager):
    company, tpl = manager
    data, passwords = big_csv()
    resp = upload(client, tpl.id, data)
    assert resp.status_code == 302
    review_url = resp.headers["Location"]
    upload_id = re.search(r"/import/([^/?]+)", review_url).group(1)
    raw = connection().get(f"offload:upload:{upload_id}")
    assert raw and b"Pw!0000xyz" not in raw and b"user0@example.com" not in raw  # encrypted in Redis

    page = client.get(review_url)
    html = page.get_data(as_text=True)
    assert page.status_code == 200
    assert '<strong class="num good-count">993</strong>' in html
    assert '<strong class="num bad-count">7</strong>' in html
    assert "Hi First0, your password is ••••" in html  # the preview masks passwords
    assert not any(p in html for p in passwords)
    for line, (_, reason) in BAD_LINES.items():
        assert f'<td class="num">{line}</td><td>{reason}</td>' in html

    result = client.post(review_url, data={"csrf_token": csrf_from(html), "template_id": str(tpl.id),
                                           "email_column": "email", "field_firstname": "firstname",
                                           "field_password": "password"})
    body = result.get_data(as_text=True)
    assert result.status_code == 200
    assert '<span class="job-count">993</span>' in body and body.count('<td class="num">') == 7
    assert not any(p in body for p in passwords)
    job = db.session.execute(select(Job).where(Job.company_id == company.id)).scalar_one()
    assert (job.type, job.source, job.email_count, job.emails_failed) == ("csv_import", "dashboard", 993, 0)
    first = db.session.execute(select(Recipient).where(Recipient.job_id == job.id).order_by(Recipient.id)).scalar()
    assert first.email == "user0@example.com" and first.data == {"firstname": "First0", "password": passwords[0]}
    assert connection().get(f"offload:upload:{upload_id}") is None  # gone once it is a job
    assert client.get(review_url).status_code == 404


def test_the_real_values_are_sent_and_mapping_renames_columns(client, manager, app):
    company, tpl = manager
    with SmtpSink() as sink:
        companies.configure(company.company, {"smtp_host": "127.0.0.1", "smtp_port": str(sink.port),
                                              "smtp_tls": "none"})
        db.session.commit()
        data = b"Mail;Given;Secret\nann@example.com;Ann;T0p-s3cret\n"
        review_url = upload(client, tpl.id, data).headers["Location"]
        html = client.get(review_url + "&email_column=Mail&field_firstname=Given&field_password=Secret") \
            .get_data(as_text=True)
        assert "Hi Ann, your password is ••••" in html and "T0p-s3cret" not in html
        client.post(review_url, data={"csrf_token": csrf_from(html), "template_id": str(tpl.id),
                                      "email_column": "Mail", "field_firstname": "Given", "field_password": "Secret"})
        run_worker_burst(app)
        (mail,) = sink.messages
        assert mail.rcpt_tos == ["ann@example.com"]
        assert "your password is T0p-s3cret" in mail.message.get_body(("plain",)).get_content()


def test_upload_without_csrf_is_400_and_stores_nothing(client, manager):
    _, tpl = manager
    resp = upload(client, tpl.id, b"email\na@example.com\n", token="forged")
    assert resp.status_code == 400
    assert list(connection().scan_iter(match="offload:upload:*")) == []


@pytest.mark.parametrize("data, message", [
    (b"", "the file is empty"),
    (b"\xff\xfe\x00bad", "the file is not UTF-8 text"),
    (b"email,email\na@example.com,b@example.com\n", "the first line must name each column once"),
    (b"email,firstname\n", "the file has no rows below its header"),
])
def test_bad_files_are_400_with_the_reason(client, manager, data, message):
    _, tpl = manager
    resp = upload(client, tpl.id, data)
    assert resp.status_code == 400 and message in resp.get_data(as_text=True)


def test_another_company_cannot_use_the_upload_or_the_template(client, manager, make_company, make_user, auth):
    company, tpl = manager
    review_url = upload(client, tpl.id, b"email\na@example.com\n").headers["Location"]
    other = make_company("Other Co")
    other_tpl = make_template(other.id, "csv_import")
    assert upload(client, other_tpl.id, b"email\na@example.com\n").status_code == 404
    auth.logout()
    user, password = make_user("boss@other.test", "manager", other.id)
    auth.login(user.email, password)
    assert client.get(review_url).status_code == 404
    assert client.get(review_url.replace(f"template_id={tpl.id}", f"template_id={other_tpl.id}")).status_code == 404


def test_uploads_are_parsed_in_memory_never_spooled_to_disk():
    big = b"email,password\n" + b"".join(b"u%d@example.com,secret-%d\n" % (i, i) for i in range(40_000))
    assert len(big) > 1024 * 1024  # werkzeug spools anything over 500 KB to a temporary file
    env = EnvironBuilder(method="POST", data={"file": (io.BytesIO(big), "big.csv")}).get_environ()
    request = Request(env)
    request.form_data_parser_class = InMemoryFormDataParser
    stream = request.files["file"].stream
    assert isinstance(stream, io.BytesIO) and stream.getvalue() == big


@pytest.mark.parametrize("role", ["manager", "admin"])
def test_campaign_pages_render_with_csrf_tokens(client, company, make_user, auth, role):
    make_template(company.id, "reengagement")
    user, password = make_user(f"{role}@acme.test", role, company.id if role == "manager" else None)
    auth.login(user.email, password)
    for path in ("/admin/campaigns/", "/admin/campaigns/import", "/admin/campaigns/reengagement"):
        resp = client.get(path)
        assert resp.status_code == 200, path
        assert csrf_from(resp.get_data(as_text=True))


def test_a_template_field_no_column_fills_is_named_and_never_sent_blank(client, manager):
    company, tpl = manager
    review_url = upload(client, tpl.id, b"email,firstname\nann@example.com,Ann\n").headers["Location"]
    html = client.get(review_url).get_data(as_text=True)
    assert 'id="unmapped-fields"' in html and "<code>password</code>" in html
    assert "Nothing is sent with a blank" in html and "Send 1 messages" not in html  # no send button
    form = {"csrf_token": csrf_from(html), "template_id": str(tpl.id), "email_column": "email",
            "field_firstname": "firstname", "field_password": ""}
    for extra in ({}, {"allow_blank": "1"}):  # the old "send with these blank" is gone
        refused = client.post(review_url, data={**form, **extra})
        assert refused.status_code == 400 and "which no CSV column fills" in refused.get_data(as_text=True)
    assert db.session.execute(select(Job).where(Job.company_id == company.id)).first() is None


def test_rows_with_a_blank_password_are_named_and_become_failed_recipients(client, manager):
    company, tpl = manager
    csv = b"email,firstname,password\nann@example.com,Ann,pw-1\nbob@example.com,Bob,\ncid@example.com,Cid,  \n"
    review_url = upload(client, tpl.id, csv).headers["Location"]
    html = client.get(review_url).get_data(as_text=True)
    assert 'id="lacking-rows"' in html and "bob@example.com: no password" in html and "cid@example.com" in html
    assert "Send 1 messages" in html
    form = {"csrf_token": csrf_from(html), "template_id": str(tpl.id), "email_column": "email",
            "field_firstname": "firstname", "field_password": "password"}
    assert client.post(review_url, data=form).status_code == 200
    job = db.session.execute(select(Job).where(Job.company_id == company.id)).scalar_one()
    rows = dict(db.session.execute(select(Recipient.email, Recipient.error).where(Recipient.job_id == job.id)).all())
    assert rows == {"ann@example.com": None, "bob@example.com": "missing_fields: password",
                    "cid@example.com": "missing_fields: password"}
    assert job.email_count == 3 and job.emails_failed == 2
