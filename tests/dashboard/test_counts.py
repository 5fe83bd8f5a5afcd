"""One source for each count: a job with failures, bounces and suppressions, sent for real through an
SMTP server by an RQ worker, shows the same figures on the job page, the job list (HTML and its JSON),
the API's job object and list, the Suppressions page and the overview (``core.counts``)."""
from __future__ import annotations

import re
from html.parser import HTMLParser

import pytest

from core import counts
from core.db import db
from core.models import Job
from core.suppressions import suppress
from tests.support.app import run_worker_burst
from tests.support.servers import SmtpSink

BOUNCING = ("gone-1@example.com", "gone-2@example.com")
REFUSED = "refused@example.com"
SUPPRESSED = "listed@example.com"


class Fields(HTMLParser):
    """The text of every element with a ``data-field``, ``data-count`` or ``data-total`` attribute, by its
    value, as a person reads the page (the first of each, and all of them in ``every``)."""

    WATCHED = ("data-field", "data-count", "data-total")

    def __init__(self, html: str, within: str | None = None):
        super().__init__(convert_charrefs=True)
        self.every: dict[str, list[str]] = {}
        self.open: list[tuple[str, str | None, bool]] = []  # (tag, watched name, inside ``within``)
        self.within = within
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        values = dict(attrs)
        inside = (self.open[-1][2] if self.open else self.within is None) or values.get("id") == self.within
        name = next((f"{a}:{values[a]}" for a in self.WATCHED if a in values), None)
        if name and inside:
            self.every.setdefault(name, []).append("")
        if tag not in ("input", "br", "img", "meta", "link", "rect", "line"):
            self.open.append((tag, name if inside else None, inside))

    def handle_endtag(self, tag):
        while self.open:
            if self.open.pop()[0] == tag:
                break

    def handle_data(self, data):
        for _, name, _ in self.open:
            if name:
                self.every[name][-1] += data

    def __getitem__(self, name: str) -> str:
        return self.every[name][0].strip()

    def number(self, name: str) -> float:
        return float(re.sub(r"[^0-9.]", "", self[name]))


@pytest.fixture
def smtp():
    refuse = {email: "550 5.1.1 user unknown" for email in BOUNCING}
    refuse[REFUSED] = "554 5.7.1 message refused"
    with SmtpSink(refuse=refuse) as sink:
        yield sink


def test_every_page_and_the_api_show_the_same_counts(app, client, make_company, make_user, auth, smtp):
    company = make_company("Counts Co", provider="smtp", sender="noreply@counts.test", smtp_host="127.0.0.1",
                           smtp_port=smtp.port, smtp_tls="none")
    suppress(company.id, SUPPRESSED, "manual")
    emails = [f"ok{i}@example.com" for i in range(14)] + [*BOUNCING, REFUSED, SUPPRESSED, "not-an-address"]
    body = {"type": "notification", "subject": "Hello", "body_text": "Hello {{ name }}",
            "recipients": [{"email": e, "data": {"name": "N"}} for e in emails]}
    created = client.post("/api/v1/jobs", json=body, headers=company.auth)
    assert created.status_code == 202, created.get_json()
    job_id = created.get_json()["id"]
    run_worker_burst(app)

    job = db.session.get(Job, job_id)
    found = counts.job_counts(job)
    # 14 sent; 2 bounced at send time (550 5.1.1); 1 refused + 1 invalid address failed; 1 suppressed
    assert (found.total, found.sent, found.failed, found.bounced, found.suppressed) == (19, 14, 2, 2, 1)
    assert job.status == "partial_failure"
    rate = 2 / 16 * 100  # bounced of what was handed to the provider (sent or bounced)

    api = client.get(f"/api/v1/jobs/{job_id}", headers=company.auth).get_json()
    listed = next(j for j in client.get("/api/v1/jobs", headers=company.auth).get_json()["jobs"]
                  if j["id"] == job_id)
    expected = {"email_count": 19, "emails_sent": 14, "emails_failed": 2, "emails_bounced": 2,
                "emails_suppressed": 1}
    assert {k: api[k] for k in expected} == expected
    assert {k: listed[k] for k in expected} == expected

    make_user("boss@counts.test", company_id=company.id)
    auth.login("boss@counts.test", "correct horse battery")
    detail = Fields(client.get(f"/admin/jobs/{job_id}/").get_data(as_text=True))
    for key, value in expected.items():
        assert detail.number(f"data-field:{key}") == value, key
    assert (detail.number("data-count:failed"), detail.number("data-count:bounced")) == (2, 2)
    assert detail.number("data-field:bounce_rate") == pytest.approx(rate, abs=0.005)
    assert detail.number("data-field:bounces") == 2 and detail.number("data-field:handed") == 16
    page = client.get(f"/admin/jobs/{job_id}/").get_data(as_text=True)
    assert page.count('class="badge badge-danger"') == 4  # the four not delivered, listed

    rows = Fields(client.get("/admin/jobs/").get_data(as_text=True), within="jobs-table")
    for key, value in expected.items():
        assert rows.number(f"data-field:{key}") == value, key
    polled = client.get("/admin/jobs/data.json").get_json()["jobs"][0]
    assert {k: polled[k] for k in expected} == expected

    suppressions = Fields(client.get("/admin/suppressions/").get_data(as_text=True))
    assert suppressions.number("data-field:bounce_rate") == pytest.approx(rate, abs=0.005)
    assert suppressions.number("data-field:bounces") == 2 and suppressions.number("data-field:handed") == 16

    overview = Fields(client.get("/admin/").get_data(as_text=True))
    assert overview.number("data-field:bounce_rate") == pytest.approx(rate, abs=0.005)
    assert overview.number("data-field:handed") == 16
    week = {s: overview.number(f"data-total:{s}") for s in ("sent", "failed", "bounced", "queued")}
    assert week == {"sent": 14, "failed": 2, "bounced": 2, "queued": 19}
