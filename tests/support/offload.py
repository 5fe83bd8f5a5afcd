"""Offload end-to-end parts: the Lambda played in-process, waiting for jobs, counting sends."""
from __future__ import annotations

import time
from collections import Counter

from sqlalchemy import select

from core.db import db
from core.models import Batch, Job, Recipient
from providers import webhooks
from tests.support.jobs import BODY
from tests.support.servers import ROOT

AWS_DIR = ROOT / "cloud_workers" / "aws"


REGION = "us-east-1"


WAIT_S = 60


class Lambda:
    """The Lambda function with its environment, fed from the SQS queue."""

    def __init__(self, module, sqs, queue_url: str):
        self.module, self.sqs, self.queue_url = module, sqs, queue_url

    def receive(self) -> list[dict]:
        messages = []
        while True:
            got = self.sqs.receive_message(QueueUrl=self.queue_url, MaxNumberOfMessages=10,
                                           WaitTimeSeconds=0).get("Messages", [])
            if not got:
                return messages
            messages.extend(got)

    def invoke(self, messages: list[dict]) -> list[str]:
        """One invocation over ``messages`` (the SQS event); deletes what succeeded."""
        event = {"Records": [{"messageId": m["MessageId"], "receiptHandle": m["ReceiptHandle"], "body": m["Body"],
                              "attributes": {}, "messageAttributes": {}, "eventSource": "aws:sqs",
                              "awsRegion": REGION} for m in messages]}
        db.session.rollback()  # hold no database transaction while the live app takes callbacks
        failed = [f["itemIdentifier"] for f in self.module.handler(event, FakeContext())["batchItemFailures"]]
        for m in messages:
            if m["MessageId"] not in failed:
                self.sqs.delete_message(QueueUrl=self.queue_url, ReceiptHandle=m["ReceiptHandle"])
        return failed

    def drain(self) -> int:
        """Run the queue empty, 10 records per invocation; returns how many records ran."""
        count = 0
        messages = self.receive()
        while messages:
            for start in range(0, len(messages), 10):
                assert self.invoke(messages[start:start + 10]) == []
            count += len(messages)
            messages = self.receive()
        return count

    def drop(self, message: dict) -> None:
        """The message is lost: never delivered to the function."""
        self.sqs.delete_message(QueueUrl=self.queue_url, ReceiptHandle=message["ReceiptHandle"])


class FakeContext:
    function_name = "offload-sender"

    @staticmethod
    def get_remaining_time_in_millis() -> int:
        return 600_000


def submit(client, company, recipients) -> int:
    resp = client.post("/api/v1/jobs", json={**BODY, "recipients": recipients}, headers=company.auth)
    assert resp.status_code == 202, resp.json
    return resp.json["id"]


def job(job_id: int) -> Job:
    db.session.expire_all()
    return db.session.get(Job, job_id)


def batches(job_id: int) -> list[Batch]:
    db.session.expire_all()
    return list(db.session.execute(select(Batch).where(Batch.job_id == job_id).order_by(Batch.batch_number))
                .scalars())


def recipient_statuses(job_id: int) -> Counter:
    db.session.expire_all()
    return Counter(db.session.execute(select(Recipient.status).where(Recipient.job_id == job_id)).scalars())


def ses_count(ses) -> Counter:
    return Counter(addr for mail in ses.store() for addr in mail["destination"]["to"])


def wait_final(job_id: int, timeout: float = WAIT_S) -> Job:
    deadline = time.monotonic() + timeout
    while True:
        current = job(job_id)
        db.session.rollback()
        if current.is_final:
            return current
        if time.monotonic() > deadline:
            raise TimeoutError(f"job {job_id} still {current.status} after {timeout}s")
        time.sleep(0.1)


CF_SECRET = webhooks.generate_secret()


CF_TOKEN = "cf-test-token"
