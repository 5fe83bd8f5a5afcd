"""Prices, and what a use of the cloud costs at them.

The table is ``core/prices.toml`` (list prices, the date they were taken, each
section's source); ``OFFLOAD_PRICES`` names an operator's file of the same
shape (TOML, or JSON) whose values replace the shipped ones key by key
(``load``). An unknown section or key, or a negative or non-numeric price, is
a ``ValueError`` naming it.

``estimate(usage, table)`` prices a mapping of meters (``core.usage``: what
the service counted as it sent) and returns ``Estimate``: one ``Line`` per
priced item and the total. ``month=False`` (a job) prices each unit at list
price with no free tier or monthly fee: what the job adds to the bill.
``month=True`` (a company's month) takes the free allowances off first and
adds the monthly fees (Workers Paid, a SendGrid or Mailgun plan) of the
services used. Nothing here reads settings or the database.
"""
from __future__ import annotations

import json
import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_PATH = Path(__file__).with_name("prices.toml")
GB = 1024 ** 3
BASE64 = 4 / 3  # attachments travel base64-encoded


def _read(path: Path) -> dict:
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".json":
        return json.loads(text)
    return tomllib.loads(text)


def defaults() -> dict:
    """The shipped table."""
    return _read(DEFAULT_PATH)


def load(path: str | Path | None = None) -> dict:
    """The shipped table with the values of the file at ``path`` (if any) in place of its own."""
    table = defaults()
    if path is None:
        return table
    path = Path(path)
    try:
        override = _read(path)
    except OSError as exc:
        raise ValueError(f"{path}: cannot be read ({type(exc).__name__})") from None
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not valid {'JSON' if path.suffix.lower() == '.json' else 'TOML'}: {exc}") from None
    return merge(table, override, where=str(path))


def merge(table: dict, override: Mapping, where: str = "prices") -> dict:
    """``table`` with ``override``'s values; only keys ``table`` has, of the same kind."""
    if not isinstance(override, Mapping):
        raise ValueError(f"{where}: expected a table of sections")
    merged = {name: dict(section) for name, section in table.items()}
    for name, section in override.items():
        if name not in table:
            raise ValueError(f"{where}: unknown section [{name}] (known: {', '.join(sorted(table))})")
        if not isinstance(section, Mapping):
            raise ValueError(f"{where}: [{name}] must be a table")
        for key, value in section.items():
            if key not in table[name]:
                raise ValueError(f"{where}: unknown key {name}.{key}")
            merged[name][key] = _checked(f"{name}.{key}", table[name][key], value, where)
    if merged["sendgrid"]["plan"] not in {p["name"] for p in merged["sendgrid"]["plans"]}:
        raise ValueError(f"{where}: sendgrid.plan names no plan in sendgrid.plans")
    if merged["mailgun"]["plan"] not in {p["name"] for p in merged["mailgun"]["plans"]}:
        raise ValueError(f"{where}: mailgun.plan names no plan in mailgun.plans")
    return merged


def _checked(key: str, shipped: Any, value: Any, where: str) -> Any:
    if isinstance(shipped, str):
        if not isinstance(value, str):
            raise ValueError(f"{where}: {key} must be text")
        return value
    if isinstance(shipped, list):  # plans
        if not isinstance(value, list) or not value:
            raise ValueError(f"{where}: {key} must be a list of plans")
        for plan in value:
            if not isinstance(plan, Mapping) or set(plan) != {"name", "per_month", "emails", "overage_per_1000"}:
                raise ValueError(f"{where}: each of {key} has name, per_month, emails and overage_per_1000")
            for part in ("per_month", "emails", "overage_per_1000"):
                _number(f"{key}.{part}", plan[part], where)
        return [dict(p) for p in value]
    return _number(key, value, where)


def _number(key: str, value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{where}: {key} must be a number of 0 or more, got {value!r}")
    return value


# --------------------------------------------------------------------------- estimates

@dataclass(frozen=True)
class Line:
    """One priced item: what, how much of it (in ``unit``), and its dollars."""

    item: str
    quantity: float
    unit: str
    usd: float


@dataclass
class Estimate:
    lines: list[Line] = field(default_factory=list)
    taken: str = ""
    currency: str = "USD"

    @property
    def total(self) -> float:
        return sum(line.usd for line in self.lines)

    def to_dict(self) -> dict:
        return {"estimated_usd": round(self.total, 8), "currency": self.currency, "prices_taken": self.taken,
                "lines": [{"item": ln.item, "quantity": round(ln.quantity, 6), "unit": ln.unit,
                           "usd": round(ln.usd, 8)} for ln in self.lines]}


class _Pricer:
    def __init__(self, usage: Mapping[str, float], table: dict, month: bool):
        self.u = usage
        self.t = table
        self.month = month
        self.lines: list[Line] = []

    def q(self, meter: str) -> float:
        return float(self.u.get(meter, 0) or 0)

    def add(self, item: str, quantity: float, unit: str, price_per_unit: float, free: float = 0.0) -> None:
        if quantity <= 0:
            return
        billed = max(0.0, quantity - free) if self.month else quantity
        self.lines.append(Line(item, quantity, unit, billed * price_per_unit))

    def fee(self, item: str, usd: float) -> None:
        self.lines.append(Line(item, 1, "month", usd))


def estimate(usage: Mapping[str, float], table: dict, *, month: bool = False) -> Estimate:
    """Price ``usage`` (meters of ``core.usage``) at ``table``."""
    p = _Pricer(usage, table, month)
    _aws(p)
    _cloudflare(p)
    _plans(p)
    _storage(p)
    smtp = p.q("emails:smtp")
    p.add("SMTP emails", smtp, "emails", table["smtp"]["per_1000_emails"] / 1000)
    about = table["about"]
    return Estimate(p.lines, taken=about["taken"], currency=about["currency"])


def _aws(p: _Pricer) -> None:
    t = p.t
    ses, sqs, lam = t["ses"], t["sqs"], t["lambda"]
    p.add("SES emails", p.q("emails:ses"), "emails", ses["per_1000_emails"] / 1000, ses["free_emails"])
    attach_gb = p.q("attachment_bytes:ses") * BASE64 / GB
    p.add("SES attachments", attach_gb, "GB", ses["per_gb_attachments"])
    requests = p.q("sqs:requests") + p.q("sqs:chunks") * sqs["consumer_requests_per_chunk"]
    p.add("SQS requests", requests, "requests", sqs["per_million_requests"] / 1e6, sqs["free_requests"])
    deliveries, handled = p.q("deliveries:lambda"), p.q("worker_emails:lambda")
    p.add("Lambda requests", deliveries, "requests", lam["per_million_requests"] / 1e6, lam["free_requests"])
    # measured by the Lambda where it reported its time; the table's assumptions for the rest
    unmeasured = max(0.0, deliveries - p.q("lambda:measured"))
    seconds = (unmeasured * lam["ms_per_delivery"] + handled * lam["ms_per_email"]) / 1000
    gb_seconds = p.q("lambda:gb_seconds") + seconds * lam["memory_mb"] / 1024
    p.add("Lambda compute", gb_seconds, "GB-seconds", lam["per_gb_second"], lam["free_gb_seconds"])
    p.add("API Gateway requests", p.q("gateway:requests"), "requests",
          t["api_gateway"]["per_million_requests"] / 1e6)


def _cloudflare(p: _Pricer) -> None:
    t = p.t
    w, cq, ce = t["workers"], t["cloudflare_queues"], t["cloudflare_email"]
    deliveries, handled = p.q("deliveries:worker"), p.q("worker_emails:worker")
    storage_requests = p.q("storage:put:worker_r2") + p.q("storage:get:worker_r2")  # served by the Worker
    used = deliveries or p.q("queue:chunks") or p.q("emails:cloudflare") or storage_requests
    if p.month and used:
        p.fee("Workers Paid plan", w["per_month"])
    p.add("Worker requests", deliveries + storage_requests, "requests", w["per_million_requests"] / 1e6,
          w["included_requests"])
    cpu = deliveries * w["cpu_ms_per_delivery"] + handled * w["cpu_ms_per_email"]
    p.add("Worker CPU time", cpu, "CPU ms", w["per_million_cpu_ms"] / 1e6, w["included_cpu_ms"])
    p.add("Queue operations", p.q("queue:chunks") * cq["operations_per_chunk"], "operations",
          cq["per_million_operations"] / 1e6, cq["included_operations"])
    p.add("Cloudflare emails", p.q("emails:cloudflare"), "emails", ce["per_1000_emails"] / 1000,
          ce["included_emails"])


def plan_named(section: dict, name: str | None = None) -> dict:
    name = name or section["plan"]
    return next(plan for plan in section["plans"] if plan["name"] == name)


def plan_cost(plan: dict, emails: float) -> float:
    """A month on ``plan`` with ``emails`` sent: its price plus overage."""
    return plan["per_month"] + max(0.0, emails - plan["emails"]) * plan["overage_per_1000"] / 1000


def cheapest_plan(section: dict, emails: float) -> dict:
    """The plan of ``section`` whose month costs least for ``emails``."""
    return min(section["plans"], key=lambda plan: plan_cost(plan, emails))


def _plans(p: _Pricer) -> None:
    for key, label in (("sendgrid", "SendGrid"), ("mailgun", "Mailgun")):
        emails = p.q(f"emails:{key}")
        if emails <= 0:
            continue
        plan = plan_named(p.t[key])
        if p.month:
            p.lines.append(Line(f"{label} {plan['name']} plan", emails, "emails", plan_cost(plan, emails)))
        else:
            p.add(f"{label} emails ({plan['name']} plan)", emails, "emails", plan["per_month"] / plan["emails"])


def _storage(p: _Pricer) -> None:
    """The buckets: certificate PDFs (their writes, a month of their bytes, their downloads) and the
    cloud workers' delivery markers (written and read once per delivery)."""
    s3, r2 = p.t["s3"], p.t["r2"]
    lam, worker = p.q("deliveries:lambda"), p.q("deliveries:worker")
    puts = p.q("storage:put:s3") + lam * s3["marker_puts_per_delivery"]
    gets = p.q("storage:get:s3") + lam * s3["marker_gets_per_delivery"]
    p.add("S3 writes (certificates, delivery markers)", puts, "requests", s3["per_1000_put"] / 1000)
    p.add("S3 reads (downloads, delivery markers)", gets, "requests", s3["per_1000_get"] / 1000)
    p.add("S3 certificate storage (a month)", p.q("storage:bytes:s3") / GB, "GB-months", s3["per_gb_month"])
    puts = p.q("storage:put:r2") + p.q("storage:put:worker_r2") + worker * r2["marker_puts_per_delivery"]
    gets = p.q("storage:get:r2") + p.q("storage:get:worker_r2") + worker * r2["marker_gets_per_delivery"]
    stored = (p.q("storage:bytes:r2") + p.q("storage:bytes:worker_r2")) / GB
    p.add("R2 class A operations (certificates, delivery markers)", puts, "operations",
          r2["per_million_class_a"] / 1e6, r2["free_class_a"])
    p.add("R2 class B operations (downloads, delivery markers)", gets, "operations",
          r2["per_million_class_b"] / 1e6, r2["free_class_b"])
    p.add("R2 certificate storage (a month)", stored, "GB-months", r2["per_gb_month"], r2["free_gb_month"])
