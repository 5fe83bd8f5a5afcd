"""Cost per job, through real parts: the usage a job's sends record (SES direct through
aws-ses-v2-local; SQS offload through moto, the Lambda and its callbacks; a Cloudflare Queue and
the Worker under miniflare), priced by the
table the API, the job page and the overview show."""
from __future__ import annotations

import math

from sqlalchemy import func, select, update

from core import usage
from core.db import db
from core.models import Company, JobUsage
from tests.support.app import run_worker_burst
from tests.support.jobs import aws_settings, people
from tests.support.offload import CF_SECRET, CF_TOKEN, batches, job, submit, wait_final


def meters(job_id: int) -> dict[str, float]:
    db.session.expire_all()
    return dict(db.session.execute(select(JobUsage.meter, func.sum(JobUsage.quantity))
                                   .where(JobUsage.job_id == job_id).group_by(JobUsage.meter)).all())


def lines(cost: dict) -> dict[str, dict]:
    return {line["item"]: line for line in cost["lines"]}


def test_a_direct_ses_job_records_each_accepted_email_and_the_api_prices_them(app, client, make_company, ses,
                                                                               make_user, auth):
    company = make_company(**aws_settings(ses.url))
    job_id = submit(client, company, people(30))
    run_worker_burst(app)
    assert job(job_id).emails_sent == 30 == len(ses.store())
    assert meters(job_id) == {"emails:ses": 30}  # no attachments, no queue: SES's emails only

    t = usage.table()
    cost = client.get(f"/api/v1/jobs/{job_id}", headers=company.auth).json["cost"]
    ses_line = lines(cost)["SES emails"]
    assert ses_line["quantity"] == 30 and ses_line["unit"] == "emails"
    assert math.isclose(ses_line["usd"], 30 * t["ses"]["per_1000_emails"] / 1000)
    assert math.isclose(cost["estimated_usd"], ses_line["usd"]) and cost["prices_taken"] == t["about"]["taken"]
    listed = client.get("/api/v1/jobs", headers=company.auth).json["jobs"]
    assert [j["cost"] for j in listed if j["id"] == job_id] == [cost]

    # the job page and the overview (month to date, projection) show it to the company's manager
    make_user("boss@cost.test", company_id=company.id)
    auth.login("boss@cost.test", "correct horse battery")
    page = client.get(f"/admin/jobs/{job_id}/").get_data(as_text=True)
    assert "Estimated cloud cost" in page and "SES emails" in page and f"${cost['estimated_usd']:.4f}" in page
    assert "Nothing used yet" not in page
    home = client.get("/admin/").get_data(as_text=True)
    month = usage.month(company.id)[0]
    assert month["to_date"].total == ses_line["usd"]  # no free tier for SES
    assert month["projected"].total >= month["to_date"].total
    assert f"${month['to_date'].total:.2f}" in home and "Projected to the month" in home


def test_sqs_offload_records_the_queue_the_lambda_and_ses_as_they_happen(app, client, offload_company, aws_lambda,
                                                                         ses, live_url, monkeypatch):
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "256")  # as Lambda sets it (template.yaml MemorySize)
    job_id = submit(client, offload_company, people(250))  # two batches of OFFLOAD_BATCH_SIZE 200
    run_worker_burst(app)
    queued = meters(job_id)
    assert [b.status for b in batches(job_id)] == ["submitted"] * 2
    # what SQS took, in 64 KB chunks: the messages as they are on the queue
    bodies = [m["Body"] for m in aws_lambda.sqs.receive_message(QueueUrl=aws_lambda.queue_url,
                                                                MaxNumberOfMessages=10,
                                                                VisibilityTimeout=0)["Messages"]]
    assert len(bodies) == 2
    expected = sum(usage.chunks(len(body.encode())) for body in bodies)
    assert queued == {"sqs:requests": expected, "sqs:chunks": expected}

    assert aws_lambda.drain() == 2  # the Lambda sends through SES and calls back, once per message
    assert job(job_id).emails_sent == 250 == len(ses.store())
    used = meters(job_id)
    measured = used.pop("lambda:gb_seconds")  # the Lambda's own measure of its time, from its callbacks
    assert used == {**queued, "deliveries:lambda": 2, "lambda:measured": 2, "emails:ses": 250}
    assert 0 < measured < 2 * 900 * 256 / 1024  # two deliveries, each within the function's timeout

    t = usage.table()
    cost = lines(client.get(f"/api/v1/jobs/{job_id}", headers=offload_company.auth).json["cost"])
    assert cost["SQS requests"]["quantity"] == expected * (1 + t["sqs"]["consumer_requests_per_chunk"])
    assert math.isclose(cost["SQS requests"]["usd"], cost["SQS requests"]["quantity"]
                        * t["sqs"]["per_million_requests"] / 1e6)
    assert cost["Lambda requests"]["quantity"] == 2
    assert math.isclose(cost["Lambda compute"]["quantity"], round(measured, 6))  # measured: no assumption
    assert cost["S3 writes (certificates, delivery markers)"]["quantity"] == 2 * t["s3"]["marker_puts_per_delivery"]
    assert math.isclose(cost["SES emails"]["usd"], 250 * t["ses"]["per_1000_emails"] / 1000)
    # a callback delivered again changes nothing: usage is added with the results, once
    assert aws_lambda.drain() == 0 and meters(job_id) == {**used, "lambda:gb_seconds": measured}


def test_a_cloudflare_queue_job_records_queue_chunks_worker_deliveries_and_emails(app, client, make_company,
                                                                                  miniflare, cloudflare_api, live_url,
                                                                                  set_settings):
    set_settings(batch_size=10)
    company = make_company(provider="cloudflare", mode="offload", sender="noreply@acme.test",
                           cloudflare_api_token=CF_TOKEN, cloudflare_account_id="acct-1",
                           cloudflare_queue_id="queue-1", cloudflare_api_base=f"{cloudflare_api.url}/client/v4")
    db.session.execute(update(Company).where(Company.id == company.id).values(callback_secret=CF_SECRET))
    db.session.commit()
    job_id = submit(client, company, people(25, prefix=f"cost{company.id}-"))
    run_worker_burst(app)
    assert wait_final(job_id).emails_sent == 25
    used = meters(job_id)
    assert used["queue:chunks"] == 3  # three small batches, one 64 KB chunk each
    assert (used["deliveries:worker"], used["worker_emails:worker"], used["emails:cloudflare"]) == (3, 25, 25)
    t = usage.table()
    cost = lines(client.get(f"/api/v1/jobs/{job_id}", headers=company.auth).json["cost"])
    assert cost["Queue operations"]["quantity"] == 3 * t["cloudflare_queues"]["operations_per_chunk"]
    assert math.isclose(cost["Cloudflare emails"]["usd"], 25 * t["cloudflare_email"]["per_1000_emails"] / 1000)


def test_a_meter_it_does_not_know_is_left_out_and_never_stops_the_caller(app, client, company, caplog):
    job_id = submit(client, company, people(1))
    usage.add(company.id, job_id, {"emails:smtp": 1, "storage:put:tape": 3})
    usage.add(company.id, job_id, {"emails:smtp": 2})
    db.session.commit()
    assert meters(job_id) == {"emails:smtp": 3}  # two workers' adds add up (one row, upserted)
    assert "storage:put:tape" in caplog.text
