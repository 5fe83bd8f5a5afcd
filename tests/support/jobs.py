"""Job bodies, recipients and settings for the sending tests; making scheduled work due."""
from __future__ import annotations

from rq.registry import ScheduledJobRegistry

from core import scheduler
from core.db import db
from core.models import Batch
from core.queue import QUEUE_NAMES, connection, kick
from tasks.rq_queue import get_queue


def aws_settings(endpoint: str) -> dict:
    return {"provider": "aws", "aws_endpoint_url": endpoint, "aws_region": "us-east-1",
            "aws_access_key": "AKIATESTTESTTEST", "aws_secret_key": "test-secret", "sender": "noreply@acme.test"}


#: a job with per-recipient data in every part (text, HTML, subject)
BODY = {"type": "csv_import", "subject": "Welcome {{ firstname }}",
        "body_text": "Hi {{ firstname }}, your password is {{ password }}",
        "body_html": "<p>Hi {{ firstname }}, your password is <b>{{ password }}</b></p>"}


def people(n: int, prefix: str = "user") -> list[dict]:
    return [{"email": f"{prefix}{i}@acme.test", "data": {"firstname": f"Name{i}", "password": f"Pw-{i}-secret"}}
            for i in range(n)]


def run_scheduled_now() -> None:
    """Move every scheduled RQ job to its queue and make retries due (what time would do)."""
    for name in QUEUE_NAMES:
        queue = get_queue(name)
        registry = ScheduledJobRegistry(queue=queue)
        for rq_id in registry.get_job_ids():
            registry.remove(rq_id)
            queue.enqueue_job(queue.fetch_job(rq_id))
    db.session.execute(Batch.__table__.update().values(next_attempt_at=None))
    db.session.commit()
    make_ready_due()


def make_ready_due() -> None:
    """Every ready-set entry due now, no company blocked on its rate (what time would do)."""
    conn = connection()
    for key in conn.scan_iter(f"{scheduler.PREFIX}:lane:*"):
        conn.zadd(key, {m: 0 for m in conn.zrange(key, 0, -1)})
    for pattern in ("block", "txwait", "bucket"):
        for key in conn.scan_iter(f"{scheduler.PREFIX}:{pattern}:*"):
            conn.delete(key)
    kick()
