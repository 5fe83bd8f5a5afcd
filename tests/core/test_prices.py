"""The price table: the shipped defaults, an operator's override file, and the arithmetic of
an estimate against the table (a job at list prices; a month with free allowances and fees)."""
from __future__ import annotations

import json
import math

import pytest

from core import prices
from core.settings import SettingsError, load


def env(**extra) -> dict:
    return {"OFFLOAD_DEV": "1", **extra}


def test_the_shipped_table_says_when_its_prices_were_taken_and_where_from():
    table = prices.defaults()
    assert table["about"]["taken"] and table["about"]["currency"] == "USD"
    for name, section in table.items():
        if name != "about":
            assert section["source"].startswith("https://") or name == "smtp", name


def test_an_override_file_changes_only_the_keys_it_sets(tmp_path):
    path = tmp_path / "prices.toml"
    path.write_text("[ses]\nper_1000_emails = 0.25\n\n[sendgrid]\nplan = \"Essentials 50k\"\n")
    table = load(env(OFFLOAD_PRICES=str(path))).prices
    shipped = prices.defaults()
    assert table["ses"]["per_1000_emails"] == 0.25
    assert table["ses"]["per_gb_attachments"] == shipped["ses"]["per_gb_attachments"]
    assert table["sqs"] == shipped["sqs"] and table["sendgrid"]["plan"] == "Essentials 50k"
    job = prices.estimate({"emails:ses": 4000}, table)
    assert math.isclose(job.total, 4000 * 0.25 / 1000)
    assert load(env()).prices is None  # unset: the shipped table (core.usage.table)


def test_a_json_override_file_works_the_same(tmp_path):
    path = tmp_path / "prices.json"
    path.write_text(json.dumps({"r2": {"per_gb_month": 0.02}}))
    assert load(env(OFFLOAD_PRICES=str(path))).prices["r2"]["per_gb_month"] == 0.02


@pytest.mark.parametrize("text, named", [
    ("[ses]\nper_1000_email = 0.1\n", "ses.per_1000_email"),
    ("[sess]\nper_1000_emails = 0.1\n", "[sess]"),
    ("[ses]\nper_1000_emails = -1\n", "ses.per_1000_emails"),
    ("[ses]\nper_1000_emails = \"cheap\"\n", "ses.per_1000_emails"),
    ("[mailgun]\nplan = \"Gold\"\n", "mailgun.plan"),
    ("[ses\n", "not valid TOML"),
])
def test_a_bad_override_stops_start_up_naming_what_is_wrong(tmp_path, text, named):
    path = tmp_path / "prices.toml"
    path.write_text(text)
    with pytest.raises(SettingsError) as err:
        load(env(OFFLOAD_PRICES=str(path)))
    assert "OFFLOAD_PRICES" in str(err.value) and named in str(err.value)
    with pytest.raises(SettingsError, match="cannot be read"):
        load(env(OFFLOAD_PRICES=str(tmp_path / "missing.toml")))


def test_a_job_is_priced_at_list_prices_with_no_free_tier_or_fee():
    t = prices.defaults()
    used = {"emails:cloudflare": 1000, "deliveries:worker": 5, "worker_emails:worker": 1000, "queue:chunks": 7,
            "storage:put:r2": 1000, "storage:bytes:r2": 2 * prices.GB, "attachment_bytes:ses": 3 * prices.GB}
    lines = {ln.item: ln for ln in prices.estimate(used, t).lines}
    assert "Workers Paid plan" not in lines
    assert math.isclose(lines["Cloudflare emails"].usd, 1000 * t["cloudflare_email"]["per_1000_emails"] / 1000)
    assert lines["Queue operations"].quantity == 7 * t["cloudflare_queues"]["operations_per_chunk"]
    cpu = 5 * t["workers"]["cpu_ms_per_delivery"] + 1000 * t["workers"]["cpu_ms_per_email"]
    assert lines["Worker CPU time"].quantity == cpu
    class_a = 1000 + 5 * t["r2"]["marker_puts_per_delivery"]
    assert math.isclose(lines["R2 class A operations (certificates, delivery markers)"].usd,
                        class_a * t["r2"]["per_million_class_a"] / 1e6)
    assert math.isclose(lines["R2 certificate storage (a month)"].usd, 2 * t["r2"]["per_gb_month"])
    # attachments are billed as sent: base64, 4/3 of the bytes
    assert math.isclose(lines["SES attachments"].quantity, 4.0) and \
        math.isclose(lines["SES attachments"].usd, 4 * t["ses"]["per_gb_attachments"])


def test_a_month_takes_the_free_allowances_off_and_adds_the_monthly_fees():
    t = prices.defaults()
    used = {"emails:cloudflare": 2000, "deliveries:worker": 10, "queue:chunks": 10}
    month = {ln.item: ln for ln in prices.estimate(used, t, month=True).lines}
    assert month["Workers Paid plan"].usd == t["workers"]["per_month"]
    assert month["Cloudflare emails"].usd == 0  # inside the included 3,000
    assert month["Queue operations"].usd == 0
    more = {ln.item: ln for ln in prices.estimate({"emails:cloudflare": 10_000}, t, month=True).lines}
    assert math.isclose(more["Cloudflare emails"].usd,
                        (10_000 - t["cloudflare_email"]["included_emails"]) * t["cloudflare_email"]["per_1000_emails"]
                        / 1000)


def test_sendgrid_and_mailgun_are_priced_by_their_plan():
    t = prices.defaults()
    plan = prices.plan_named(t["sendgrid"])
    job = prices.estimate({"emails:sendgrid": 1000}, t).lines[0]
    assert math.isclose(job.usd, 1000 * plan["per_month"] / plan["emails"])
    over = plan["emails"] + 5000
    month = prices.estimate({"emails:sendgrid": over}, t, month=True).lines[0]
    assert math.isclose(month.usd, plan["per_month"] + 5000 * plan["overage_per_1000"] / 1000)
    cheapest = prices.cheapest_plan(t["mailgun"], 20_000)
    assert prices.plan_cost(cheapest, 20_000) == min(prices.plan_cost(p, 20_000) for p in t["mailgun"]["plans"])


def test_lambda_time_is_the_lambdas_own_measure_where_it_reported_one():
    t = prices.defaults()
    lam = t["lambda"]
    used = {"deliveries:lambda": 3, "lambda:measured": 2, "lambda:gb_seconds": 1.5, "worker_emails:lambda": 200}
    line = next(ln for ln in prices.estimate(used, t).lines if ln.item == "Lambda compute")
    assumed = (1 * lam["ms_per_delivery"] + 200 * lam["ms_per_email"]) / 1000 * lam["memory_mb"] / 1024
    assert math.isclose(line.quantity, 1.5 + assumed)
    assert math.isclose(line.usd, (1.5 + assumed) * lam["per_gb_second"])
