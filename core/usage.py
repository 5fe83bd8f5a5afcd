"""What each job used of the cloud, counted where it happens, and what that costs.

The meters (``METERS``) are facts the service sees as a job runs, added in the
same transaction as the results they come with:

- ``emails:<provider>``: messages a provider accepted (``ses``, ``cloudflare``,
  ``sendgrid``, ``mailgun``, ``smtp``): in direct mode the provider's answer
  (``core.delivery.send``), in offload mode the cloud worker's callback, which
  says what it sent (``core.delivery.results``);
- ``attachment_bytes:<provider>``: the attachments' bytes of those messages
  (direct mode) or of the batch messages the queue took (offload);
- ``sqs:requests``: SendMessageBatch requests as SQS bills them (each 64 KB of
  a call's payload), ``sqs:chunks``: the 64 KB chunks of the messages the queue
  took (the Lambda receives and deletes each); ``queue:chunks``: the same for a
  Cloudflare Queue; ``gateway:requests``: HTTPS offload POSTs to an API
  Gateway in front of the Lambda (``core.delivery.submit``);
- ``deliveries:lambda`` / ``deliveries:worker``: batch messages a cloud worker
  reported on (one callback each: an invocation, its delivery marker's writes
  and read); ``lambda:gb_seconds``: the Lambda's own measure of its time
  (milliseconds × memory, the callback's ``usage``) over ``lambda:measured``
  of those deliveries; ``worker_emails:lambda`` / ``worker_emails:worker``:
  the recipients of the deliveries that reported no time, which the price
  table's per-email time turns into time;
- ``storage:put:<kind>``, ``storage:bytes:<kind>``: certificate PDFs written
  to a bucket (``s3``, ``r2``, ``worker_r2``, ``local``) and their bytes
  (``core.certificate_issue``); ``storage:get:<kind>``: downloads through the
  verification page's link.

``core.prices`` turns them into dollars: ``job_cost`` for one job (list
prices, no free tier), ``month`` for each company's month to date and its
projection to the month's end (free allowances and monthly fees of each
company's own cloud account counted). A row per job, meter and UTC day;
adding is an upsert, so concurrent workers add up.
"""
from __future__ import annotations

import calendar
import logging
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping
from datetime import date, datetime
from functools import lru_cache

from sqlalchemy import func, select
from sqlalchemy.dialects import postgresql, sqlite

from core import prices, settings
from core.bulk import is_postgres
from core.db import db
from core.models import Company, JobUsage, utcnow

PROVIDERS = ("ses", "cloudflare", "sendgrid", "mailgun", "smtp")
WORKERS = ("lambda", "worker")
STORAGE = ("s3", "r2", "worker_r2", "local")
METERS = frozenset(
    [f"emails:{p}" for p in PROVIDERS] + [f"attachment_bytes:{p}" for p in PROVIDERS]
    + ["sqs:requests", "sqs:chunks", "queue:chunks", "gateway:requests"]
    + [f"deliveries:{w}" for w in WORKERS] + [f"worker_emails:{w}" for w in WORKERS]
    + ["lambda:measured", "lambda:gb_seconds"]
    + [f"storage:{what}:{kind}" for what in ("put", "bytes", "get") for kind in STORAGE])
log = logging.getLogger(__name__)

#: the cloud worker that sends a provider's offloaded batches
WORKER_OF = {"ses": "lambda", "cloudflare": "worker"}


def chunks(size: int, chunk: int = 65_536) -> int:
    """How many billing chunks ``size`` bytes are (at least one)."""
    return max(1, math.ceil(size / chunk))


def add(company_id: int, job_id: int, amounts: Mapping[str, float], day: date | None = None) -> None:
    """Add ``amounts`` (meter → quantity) to the job's usage of ``day`` (today, UTC), in the
    caller's transaction (it commits). Zeros are skipped; a meter this module does not know (a
    backend added since) is left out with a warning: counting never stops a send."""
    amounts = {meter: float(q) for meter, q in amounts.items() if q}
    unknown = set(amounts) - METERS
    if unknown:
        log.warning("Job %s: usage not counted for unknown meters %s", job_id, ", ".join(sorted(unknown)))
        amounts = {meter: q for meter, q in amounts.items() if meter in METERS}
    if not amounts:
        return
    day = day or utcnow().date()
    rows = [{"company_id": company_id, "job_id": job_id, "day": day, "meter": meter, "quantity": q}
            for meter, q in sorted(amounts.items())]  # one order everywhere: no lock cycles
    db.session.execute(_upsert(is_postgres()), rows)


@lru_cache(maxsize=2)
def _upsert(postgres: bool):
    """The upsert of a job's meters, built once per dialect (every chunk's results run it)."""
    stmt = (postgresql if postgres else sqlite).insert(JobUsage.__table__)
    return stmt.on_conflict_do_update(index_elements=["job_id", "day", "meter"],
                                      set_={"quantity": JobUsage.__table__.c.quantity + stmt.excluded.quantity})


# --------------------------------------------------------------------------- reading

def table() -> dict:
    """The price table in force: ``OFFLOAD_PRICES``'s merged over the shipped one."""
    return settings.current().prices or _shipped()


@lru_cache(maxsize=1)
def _shipped() -> dict:
    return prices.load()


def of_jobs(company_id: int | None, job_ids: Iterable[int]) -> dict[int, dict[str, float]]:
    """Each job's meters (all days), for jobs of ``company_id`` (``None``: any)."""
    ids = list(job_ids)
    out: dict[int, dict[str, float]] = {i: {} for i in ids}
    if not ids:
        return out
    stmt = select(JobUsage.job_id, JobUsage.meter, func.sum(JobUsage.quantity)).where(
        JobUsage.job_id.in_(ids)).group_by(JobUsage.job_id, JobUsage.meter)
    if company_id is not None:
        stmt = stmt.where(JobUsage.company_id == company_id)
    for job_id, meter, quantity in db.session.execute(stmt):
        out[job_id][meter] = float(quantity)
    return out


def job_cost(company_id: int | None, job_id: int) -> prices.Estimate:
    """The job's estimated cost so far, at list prices."""
    return prices.estimate(of_jobs(company_id, [job_id])[job_id], table())


def job_costs(company_id: int | None, job_ids: Iterable[int]) -> dict[int, prices.Estimate]:
    t = table()
    return {job_id: prices.estimate(u, t) for job_id, u in of_jobs(company_id, job_ids).items()}


def month_start(now: datetime) -> date:
    return now.date().replace(day=1)


def of_month(company_id: int | None, now: datetime | None = None) -> dict[int, dict[str, float]]:
    """Each company's meters of the current UTC month (``None``: every company's)."""
    now = now or utcnow()
    stmt = select(JobUsage.company_id, JobUsage.meter, func.sum(JobUsage.quantity)).where(
        JobUsage.day >= month_start(now)).group_by(JobUsage.company_id, JobUsage.meter)
    if company_id is not None:
        stmt = stmt.where(JobUsage.company_id == company_id)
    out: dict[int, dict[str, float]] = defaultdict(dict)
    for cid, meter, quantity in db.session.execute(stmt):
        out[cid][meter] = float(quantity)
    return dict(out)


def month_fraction(now: datetime) -> float:
    """How much of the UTC month has gone by (never 0)."""
    days = calendar.monthrange(now.year, now.month)[1]
    start = datetime(now.year, now.month, 1)
    return max((now - start).total_seconds() / (days * 86400), 1 / (days * 24))


def month(company_id: int | None, now: datetime | None = None, limit: int = 10) -> list[dict]:
    """Each company's month to date and its projection to the month's end (the usage so far,
    at the pace so far), the most expensive first; ``limit`` companies at most."""
    now = now or utcnow()
    t, used = table(), of_month(company_id, now)
    ids = [company_id] if company_id is not None else list(used)
    names = dict(db.session.execute(select(Company.id, Company.name).where(Company.id.in_(ids))).all()) if ids else {}
    fraction = month_fraction(now)
    rows = []
    for cid in ids:
        meters = used.get(cid, {})
        to_date = prices.estimate(meters, t, month=True)
        projected = prices.estimate({m: q / fraction for m, q in meters.items()}, t, month=True)
        rows.append({"company_id": cid, "name": names.get(cid, f"#{cid}"), "to_date": to_date,
                     "projected": projected, "month": now.strftime("%B %Y"), "taken": t["about"]["taken"]})
    rows.sort(key=lambda r: -r["to_date"].total)
    return rows[:limit]
