"""High 1 (third round): a template cannot stall a worker, and a missing variable is never a blank.

The review's payloads, each through the path it attacked: the API's sample render in
``POST /api/v1/jobs`` (and a real gunicorn worker, whose timeout it tripped), the template and
certificate previews, a worker's chunk of recipients and certificate issuance. Each one is
stopped with an error that names the limit, and the test checks the mechanism that stopped
it: the renderer process that ran it is gone (killed after the deadline, or ended by its own
alarm or its memory cap), and the calling process did not build the value (its peak memory
barely moved). Times and memory are in the assertion messages; the only clock assertions are
ceilings several times the budget.

Strict undefined, in each path: the sample render, a worker's send (direct and offload), the
preview, the certificate template form.
"""
from __future__ import annotations

import os
import threading
import time
import uuid

import boto3
import pytest
import requests
from sqlalchemy import select

from core import certificate_process, rendering, settings
from core.certificate_render import DEFAULT_TEMPLATE_HTML
from core.db import db
from core.models import CertificateTemplate, Job, Recipient, Template
from tests.support.app import csrf_from, run_worker_burst
from tests.support.attack import login_as
from tests.support.certificates import learners, ses_settings
from tests.support.certificates import submit as submit_certificates
from tests.support.jobs import run_scheduled_now
from tests.support.servers import WebApp

BUDGET = rendering.PREVIEW_BUDGET_S
#: a stop must come well within this many seconds of the budget (the kill is at budget + 0.5 s)
CEILING = 10.0
#: the calling process may grow by this much at most while a payload is stopped elsewhere (MB)
CALLER_MB = 100


# --------------------------------------------------------------------------- measuring

def _status_kb(pid: int | str, field: str) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def _renderers() -> list[int]:
    """This process's renderer children."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as fh:
                parent = int(fh.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{name}/cmdline", "rb") as fh:
                cmd = fh.read()
        except OSError:
            continue
        if parent == os.getpid() and (b"core.render_child" in cmd or b"core.certificate_process" in cmd):
            found.append(int(name))
    return found


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def warm_certificates():
    """A certificate child at rest (it takes seconds to start), whose end the test can then watch."""
    certificate_process.render_pdf(DEFAULT_TEMPLATE_HTML, "", {"learner_name": "A", "course_name": "B",
                                                               "completion_date": "2026-01-01"},
                                   logo=None, verify_url="https://example.invalid/verify/0", code="0")
    return certificate_process.pool()


class Measured:
    """Runs ``fn``: its wall time, the caller's peak memory growth, the renderers' peak memory (sampled
    every 20 ms), and whether the renderer idle before it was stopped (``pool``: whose children)."""

    def __init__(self, fn, pool=None):
        if pool is None:
            rendering.CompiledTemplate("warm", "{% for i in [1] %}{{ i }}{% endfor %}", None).render({})
            pool = getattr(rendering, "pool", lambda: None)()  # (the engine before the renderer: none)
        self.idle_before = pool.idle_pids() if pool else []
        self.renderer_kb = 0
        stop = threading.Event()

        def sample():
            while not stop.is_set():
                for pid in _renderers():
                    try:
                        self.renderer_kb = max(self.renderer_kb, _status_kb(pid, "VmHWM"))
                    except OSError:
                        pass
                stop.wait(0.02)

        watcher = threading.Thread(target=sample, daemon=True)
        watcher.start()
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")  # resets this process's peak RSS (VmHWM)
        rss = _status_kb("self", "VmRSS")
        started = time.monotonic()
        try:
            self.result = fn()
        finally:
            self.seconds = time.monotonic() - started
            self.caller_mb = max(0, _status_kb("self", "VmHWM") - rss) / 1024
            stop.set()
            watcher.join()
        self.renderer_stopped = bool(self.idle_before) and not any(_running(p) for p in self.idle_before)

    def __str__(self) -> str:
        return (f"stopped after {self.seconds:.2f} s; caller grew {self.caller_mb:.0f} MB; renderer peak "
                f"{self.renderer_kb / 1024:.0f} MB; renderer that ran it stopped: {self.renderer_stopped}")


def post_job(client, company, body_text: str, recipients=None, **extra):
    return client.post("/api/v1/jobs", headers=company.auth, json={
        "type": "csv_import", "subject": "Hello", "body_text": body_text,
        "recipients": recipients or [{"email": "a@acme.test", "data": {}}], **extra})


# --------------------------------------------------------------------------- the API's sample render

TIME = f"takes longer than {BUDGET:g} s to render"
MEMORY = f"needs more than {getattr(rendering, 'RENDER_MEMORY_MB', 256)} MB of memory"
STOPPED_BY_THE_RENDERER = [
    # Python code that never reaches the sandbox's checks: the renderer's alarm at the budget
    ("{{ lipsum(400000)|length }}", (TIME,)),
    ("{{ lipsum(600000) }}", (TIME,)),
    # one C call building 300 M characters: the memory cap or the clock, whichever comes first
    ("{{ ([[0]*1000]*100000)|string|length }}", (TIME, MEMORY)),
    # C code that no alarm interrupts: the parent kills the renderer after the deadline
    ("{{ ([[0]*1000]*100000)|tojson|length }}", (TIME,)),
    # a hundred thousand lists of a thousand: the memory cap
    ("{{ ([[0]*1000]*100000)|map('list')|list|length }}", (MEMORY, TIME)),
]


@pytest.mark.parametrize("source,words", STOPPED_BY_THE_RENDERER)
def test_a_sample_render_that_runs_away_is_stopped_in_the_renderer(client, company, source, words):
    run = Measured(lambda: post_job(client, company, source))
    resp = run.result
    assert resp.status_code == 400, f"{resp.status_code} {resp.get_data(as_text=True)[:200]}; {run}"
    answer = resp.get_json()
    assert answer["error"] == "template_error" and any(w in answer["message"] for w in words), f"{answer}; {run}"
    assert run.renderer_stopped, f"the renderer should have been stopped; {run}"
    assert run.seconds < BUDGET + CEILING, str(run)
    assert run.caller_mb < CALLER_MB, str(run)
    assert db.session.query(Job).count() == 0


@pytest.mark.parametrize("source,words", [
    ("{{ [1]|batch(50000000, 'a')|list|length }}", "batch takes a whole number from 1 to 100000"),
    ("{{ [1, 2]|slice(50000000, 'a')|list|length }}", "slice takes a whole number from 1 to 100000"),
    ("{% set s = 'x' * 99999 %}{{ (s ~ s ~ s ~ s)|length }}", "a value in the template is too large"),
    ("{% set s = 'x' * 60000 %}{% set s = s ~ s %}{% set s = s ~ s %}{{ s|length }}",
     "a value in the template is too large"),
])
def test_filters_and_concatenation_are_checked_before_they_build(client, company, source, words):
    run = Measured(lambda: post_job(client, company, source))
    resp = run.result
    assert resp.status_code == 400, f"{resp.get_data(as_text=True)[:200]}; {run}"
    assert words in resp.get_json()["message"], f"{resp.get_json()}; {run}"
    assert run.caller_mb < CALLER_MB and run.seconds < BUDGET + CEILING, str(run)


def test_after_a_stop_the_next_render_is_served_by_a_fresh_renderer(client, company):
    assert post_job(client, company, "{{ lipsum(600000) }}").status_code == 400
    spawned = rendering.pool().spawned
    ok = post_job(client, company, "Hi {% for i in range(3) %}{{ i }}{% endfor %}")
    assert ok.status_code == 202, ok.get_json()
    assert rendering.pool().spawned <= spawned + 1


@pytest.fixture
def gunicorn(app):
    """The app under a real gunicorn worker with a 10 s timeout (the review's 600 000 paragraphs tripped it)."""
    with WebApp(settings.current().database_url, settings.current().redis_url, timeout_s=10) as web:
        yield web.url, web.log_path


def test_a_real_gunicorn_worker_answers_400_and_keeps_serving(company, gunicorn):
    base, log = gunicorn
    body = {"type": "csv_import", "subject": "Hello", "body_text": "{{ lipsum(600000) }}",
            "recipients": [{"email": "a@acme.test", "data": {}}]}
    started = time.monotonic()
    resp = requests.post(f"{base}/api/v1/jobs", json=body, headers=company.auth, timeout=60)
    took = time.monotonic() - started
    assert resp.status_code == 400 and TIME in resp.json()["message"], f"{resp.status_code} {resp.text[:200]}"
    assert took < BUDGET + CEILING, f"took {took:.2f} s"
    ok = requests.post(f"{base}/api/v1/jobs", json={**body, "body_text": "Hi {{ name }}",
                                                    "recipients": [{"email": "a@acme.test",
                                                                    "data": {"name": "Ann"}}]},
                       headers=company.auth, timeout=60)
    assert ok.status_code == 202, ok.text[:300]
    assert "WORKER TIMEOUT" not in log.read_text(errors="replace")


# --------------------------------------------------------------------------- previews

def saved_template(company_id: int, body_text: str) -> Template:
    tpl = Template(company_id=company_id, name=f"t-{uuid.uuid4().hex[:6]}", job_type="csv_import",
                   subject="Hello {{ firstname }}", body_text=body_text, body_html=None)
    db.session.add(tpl)
    db.session.commit()
    return tpl


def test_the_template_preview_stops_a_runaway_with_a_400(client, company, make_user):
    login_as(client, make_user, "mgr@acme.test", company_id=company.id)
    tpl = saved_template(company.id, "{{ lipsum(400000)|length }}")
    page = client.get(f"/admin/templates/preview/{tpl.id}/").get_data(as_text=True)
    run = Measured(lambda: client.post(f"/admin/templates/preview/{tpl.id}/", data={
        "csrf_token": csrf_from(page), "sample": '{"firstname": "Ann"}'}))
    assert run.result.status_code == 400, str(run)
    assert TIME in run.result.get_data(as_text=True), str(run)
    assert run.renderer_stopped and run.seconds < BUDGET + CEILING and run.caller_mb < CALLER_MB, str(run)


def test_the_certificate_preview_stops_a_runaway_with_a_400(client, company, make_user):
    login_as(client, make_user, "mgr@acme.test", company_id=company.id)
    token = csrf_from(client.get("/admin/certificate-templates/new").get_data(as_text=True))
    run = Measured(lambda: client.post("/admin/certificate-templates/preview", data={
        "csrf_token": token, "html": "<p>{{ lipsum(400000)|length }}</p>", "css": ""}), warm_certificates())
    assert run.result.status_code == 400, str(run)
    assert "template does not render" in run.result.get_data(as_text=True), str(run)
    assert TIME in run.result.get_data(as_text=True), str(run)
    assert run.renderer_stopped and run.seconds < BUDGET + CEILING and run.caller_mb < CALLER_MB, str(run)


def test_a_certificate_layout_that_runs_away_is_stopped_in_its_process(client, company, make_user, monkeypatch):
    """90,000 table rows render within the template's limits (1.7 M characters); xhtml2pdf would lay them
    out for a minute (its own clock, between elements) in whatever memory it takes."""
    monkeypatch.setattr(certificate_process, "CERTIFICATE_PREVIEW_BUDGET_S", 4.0)
    login_as(client, make_user, "mgr@acme.test", company_id=company.id)
    token = csrf_from(client.get("/admin/certificate-templates/new").get_data(as_text=True))
    rows = ("<table>{% for i in range(9) %}{% for j in range(10000) %}<tr><td>x</td></tr>{% endfor %}{% endfor %}"
            "</table>")
    run = Measured(lambda: client.post("/admin/certificate-templates/preview", data={
        "csrf_token": token, "html": rows, "css": ""}), warm_certificates())
    page = run.result.get_data(as_text=True)
    assert run.result.status_code == 400, f"{page[:200]}; {run}"
    assert "template does not lay out: the certificate" in page and \
        ("takes longer than 4 s to make" in page or "MB of memory" in page), f"{page[:200]}; {run}"
    assert run.renderer_stopped and run.seconds < 4 + CEILING and run.caller_mb < CALLER_MB, str(run)


# --------------------------------------------------------------------------- a worker's send

def drive(app, job_id: int, rounds: int = 8) -> list[float]:
    """Run the worker until the job is final, making retries due at once; the time of each run."""
    runs = []
    for _ in range(rounds):
        started = time.monotonic()
        run_worker_burst(app)
        runs.append(time.monotonic() - started)
        db.session.expire_all()
        if db.session.get(Job, job_id).is_final:
            break
        run_scheduled_now()
    return runs


def test_a_worker_chunk_shares_one_budget_and_each_slow_recipient_fails_alone(app, client, make_company, smtp_sink,
                                                                             monkeypatch):
    monkeypatch.setattr(rendering, "RENDER_BUDGET_S", 1.0)
    company = make_company(provider="smtp", sender="noreply@acme.test", smtp_host="127.0.0.1",
                           smtp_port=str(smtp_sink.port), smtp_tls="none")
    recipients = [{"email": "ok@acme.test", "data": {"n": 3}}] + \
        [{"email": f"slow{i}@acme.test", "data": {"n": 400000}} for i in range(2)]
    resp = post_job(client, company, "{{ lipsum(n)|length }} paragraphs", recipients)
    assert resp.status_code == 202, resp.get_json()
    job_id = resp.get_json()["id"]
    runs = drive(app, job_id)
    took = ", ".join(f"{t:.2f} s" for t in runs)
    done = db.session.get(Job, job_id)
    assert done.is_final, f"runs: {took}"
    # each run rendered under one budget for its chunk: the first slow recipient of a run fails with the
    # whole budget, the ones after it wait for the next run (none fails for time it was never given)
    assert max(runs) < rendering.RENDER_BUDGET_S + CEILING, f"runs: {took}"
    errors = dict(db.session.execute(select(Recipient.email, Recipient.error)
                                     .where(Recipient.job_id == job_id, Recipient.status == "failed")).all())
    assert set(errors) == {"slow0@acme.test", "slow1@acme.test"}, f"{errors}; runs: {took}"
    assert all(e.startswith("render_error: ") and "takes longer than 1 s to render" in e for e in errors.values()), \
        errors
    assert smtp_sink.recipients() == ["ok@acme.test"], f"runs: {took}"


def test_a_certificate_that_runs_away_fails_that_learner_alone(app, client, make_company, ses, s3_bucket,
                                                               monkeypatch):
    monkeypatch.setattr(rendering, "RENDER_BUDGET_S", 1.0)
    company = make_company(**ses_settings(ses.url), s3_bucket=s3_bucket)
    db.session.add(CertificateTemplate(company_id=company.id, name="Slow for one", html=(
        "<html><body><p>{{ learner_name }}</p><p>{{ course_name }}</p>"
        "{% if learner_name == 'Slow Learner' %}{{ lipsum(400000)|length }}{% endif %}</body></html>")))
    db.session.commit()
    slow = {"email": "slow@acme.test", "data": {"learner_name": "Slow Learner", "course_name": "Fire Safety",
                                                "completion_date": "2026-11-20"}}
    job_id = submit_certificates(client, company, learners(2) + [slow])
    run = Measured(lambda: run_worker_burst(app), warm_certificates())
    db.session.expire_all()
    done = db.session.get(Job, job_id)
    assert (done.status, done.emails_sent, done.emails_failed) == ("partial_failure", 2, 1), str(run)
    error = db.session.execute(select(Recipient.error).where(Recipient.email == "slow@acme.test")).scalar()
    assert error.startswith("certificate_error: template does not render:") and \
        "takes longer than 1 s to render" in error, f"{error}; {run}"
    assert run.renderer_stopped, f"the certificate child that ran it should have been stopped; {run}"
    assert run.seconds < rendering.RENDER_BUDGET_S + CEILING + 20 and run.caller_mb < CALLER_MB, str(run)


def test_only_plain_templates_with_data_their_bound_allows_render_in_the_calling_process():
    plain = rendering.CompiledTemplate("Hi {{ name|title }}", "{{ name }}{% if vip is defined %} (VIP){% endif %}",
                                       "<p>{{ name|e }} {{ 'x' if name == 'Ann' else 'y' }}</p>")
    plain.render_many([{"name": "Ann"}, {"name": "Bo"}])  # a second use: compiled here too
    taken = rendering.pool().taken
    assert plain.render({"name": "Ann", "vip": True}).text == "Ann (VIP)"
    assert len(plain.render_many([{"name": f"n{i}"} for i in range(50)])) == 50
    assert rendering.pool().taken == taken, "a plain template with small data renders here"
    big = plain.render({"name": "x" * 1_000_000})  # over its work bound: to the renderer, and it still renders
    assert big.text == "x" * 1_000_000 and rendering.pool().taken == taken + 1
    for body in ("{% for c in cs %}{{ c }}{% endfor %}", "{{ name * 2 }}", "{{ name.upper() }}", "{{ lipsum(1) }}",
                 "{% set x = name %}{{ x }}", "{{ name|replace('a', 'b') }}", "{{ 'a' in name }}"):
        template = rendering.CompiledTemplate("s", body, None)
        template.render_many([{"name": "Ann", "cs": [1]}] * 2)
        before = rendering.pool().taken
        template.render({"name": "Ann", "cs": [1]})
        assert rendering.pool().taken == before + 1, f"{body} is not plain: it renders in the renderer"


# --------------------------------------------------------------------------- strict undefined

def test_a_sample_missing_a_variable_is_a_400_naming_it(client, company):
    resp = post_job(client, company, "Your password is {{ password }}.",
                    [{"email": "a@acme.test", "data": {"firstname": "Ann"}}])
    assert resp.status_code == 400 and resp.get_json()["error"] == "missing_fields"
    assert resp.get_json()["details"]["fields"] == ["password"]
    # a value inside a field is found when the sample renders
    resp = post_job(client, company, "Your password is {{ account.password }}.",
                    [{"email": "a@acme.test", "data": {"account": {}}}])
    assert resp.status_code == 400
    assert resp.get_json()["message"] == "body_text: line 1: no attribute or key 'password'"


def test_undefined_is_strict_for_tests_comparisons_and_loops_but_default_and_defined_still_work(company):
    ok = rendering.CompiledTemplate("Hi {{ name|default('there') }}",
                                    "{% if nick is defined %}{{ nick }}{% else %}-{% endif %}", None)
    assert ok.render({}).subject == "Hi there" and ok.render({}).text == "-"
    for body in ("{% if vip %}VIP{% endif %}", "{{ 'x' if vip == 1 else 'y' }}", "{% for c in courses %}{% endfor %}",
                 "{{ vip|length }}", "{{ vip ~ '!' }}", "{{ user.name }}"):
        with pytest.raises(rendering.RenderError, match="is undefined") as failed:
            rendering.CompiledTemplate("s", body, None).render({})
        assert failed.value.part == "body_text"
    with pytest.raises(rendering.RenderError, match="no attribute or key 'name'"):
        rendering.CompiledTemplate("s", "{{ user.name }}", None).render({"user": {}})


def test_the_variables_a_template_uses_and_a_recipient_lacks():
    tpl = rendering.CompiledTemplate("Welcome {{ firstname }}", "{{ password }} {{ nick|default('') }}",
                                     "{% if course is defined %}{{ course }}{% endif %}{% for c in cs %}{{ c }}"
                                     "{% endfor %}")
    assert tpl.variables == ("course", "cs", "firstname", "nick", "password")
    assert tpl.required == ("cs", "firstname", "password")
    assert tpl.missing({"firstname": "Ann"}) == ["cs", "password"]
    assert tpl.missing({"firstname": "Ann", "password": "x", "cs": []}) == []


def test_a_worker_fails_the_recipient_that_lacks_a_variable_and_sends_no_blank(app, client, make_company,
                                                                              smtp_sink):
    company = make_company(provider="smtp", sender="noreply@acme.test", smtp_host="127.0.0.1",
                           smtp_port=str(smtp_sink.port), smtp_tls="none")
    # (a field the data lacks is refused at submit; a value inside one is found as each recipient renders)
    recipients = [{"email": "full@acme.test", "data": {"account": {"password": "Pw-1"}}},
                  {"email": "blank@acme.test", "data": {"account": {}}}]
    resp = post_job(client, company, "Your password is {{ account.password }}.", recipients)
    assert resp.status_code == 202
    run_worker_burst(app)
    error = db.session.execute(select(Recipient.error).where(Recipient.email == "blank@acme.test")).scalar()
    assert error == "render_error: body_text: line 1: no attribute or key 'password'"
    assert smtp_sink.recipients() == ["full@acme.test"]
    assert all(b"password is ." not in m.data for m in smtp_sink.messages)


def test_offload_fails_the_recipient_that_lacks_a_variable_and_never_queues_it(app, client, make_company,
                                                                              moto_server):
    sqs = boto3.client("sqs", region_name="us-east-1", endpoint_url=moto_server.url,
                       aws_access_key_id="testing", aws_secret_access_key="testing")
    queue_url = sqs.create_queue(QueueName=f"strict-{uuid.uuid4().hex[:8]}")["QueueUrl"]
    company = make_company(provider="aws", mode="offload", sender="noreply@acme.test", aws_region="us-east-1",
                           aws_endpoint_url=moto_server.url, aws_access_key="testing", aws_secret_key="testing",
                           sqs_queue_url=queue_url)
    # (a field the data lacks is refused at submit; a value inside one is found as each recipient renders)
    recipients = [{"email": "full@acme.test", "data": {"account": {"password": "Pw-1"}}},
                  {"email": "blank@acme.test", "data": {"account": {}}}]
    resp = post_job(client, company, "Your password is {{ account.password }}.", recipients)
    assert resp.status_code == 202
    run_worker_burst(app)
    error = db.session.execute(select(Recipient.error).where(Recipient.email == "blank@acme.test")).scalar()
    assert error == "render_error: body_text: line 1: no attribute or key 'password'"
    bodies = [m["Body"] for m in sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10,
                                                      WaitTimeSeconds=1).get("Messages", [])]
    assert bodies and all("full@acme.test" in b and "blank@acme.test" not in b for b in bodies)


def test_the_preview_of_a_sample_missing_a_variable_is_a_400_naming_it(client, company, make_user):
    login_as(client, make_user, "mgr@acme.test", company_id=company.id)
    tpl = saved_template(company.id, "Your password is {{ password }}.")
    page = client.get(f"/admin/templates/preview/{tpl.id}/").get_data(as_text=True)
    resp = client.post(f"/admin/templates/preview/{tpl.id}/", data={"csrf_token": csrf_from(page),
                                                                    "sample": '{"firstname": "Ann"}'})
    assert resp.status_code == 400 and "&#39;password&#39; is undefined" in resp.get_data(as_text=True)


def test_a_certificate_template_naming_a_field_no_learner_has_is_refused(client, company, make_user):
    login_as(client, make_user, "mgr@acme.test", company_id=company.id)
    token = csrf_from(client.get("/admin/certificate-templates/new").get_data(as_text=True))
    resp = client.post("/admin/certificate-templates/new", data={
        "csrf_token": token, "name": "Typo", "html": "<p>{{ learner_name }} completed {{ course }}</p>"})
    assert resp.status_code == 400
    assert "template does not render: line 1: &#39;course&#39; is undefined" in resp.get_data(as_text=True)
    assert db.session.query(CertificateTemplate).count() == 0
