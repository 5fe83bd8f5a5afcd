"""SMTP submission under faults, with the real process (``flask --app wsgi smtp``) and PostgreSQL:
- SIGKILLed mid-burst (and restarted, as systemd would): every message that got its 250 is stored once
  and becomes one recipient of one job; a message whose 250 never came may be kept, never twice;
- PostgreSQL stopped mid-burst: the answers are 451 while it is down, never a 250 that is then lost, and
  250 again once it is back, by itself."""
from __future__ import annotations

import smtplib
import time
from collections import Counter

import pytest
from sqlalchemy import select, text

from core import settings, submissions
from core.db import db
from core.models import SmtpMessage, utcnow
from tests.support.faults import SmtpProcess
from tests.support.smtp_clients import Burst

MESSAGES = 1_500
KILLS = 3


@pytest.fixture
def smtp(app):
    """The SMTP submission process on the test's cluster and Redis."""
    s = settings.current()
    process = SmtpProcess({"DATABASE_URL": s.database_url, "REDIS_URL": s.redis_url,
                           "OFFLOAD_BULK_WINDOW_S": "0.5", "OFFLOAD_BULK_MAX_HOLD_S": "1"})
    yield process.start()
    process.stop()


@pytest.fixture
def sender(make_company):
    return make_company("Acme Learning", sender="noreply@acme.test", provider="smtp")


def stored_addresses() -> Counter:
    """How many stored messages each envelope recipient has."""
    db.session.rollback()
    rows = db.session.execute(select(SmtpMessage.rcpt_to)).scalars().all()
    return Counter(address for rcpt in rows for address in rcpt)


def jobbed_recipients() -> Counter:
    """How many job recipients each address became, once every window is closed."""
    for company_id, job_type in db.session.execute(text(
            "SELECT DISTINCT company_id, job_type FROM smtp_messages WHERE status = 'waiting'")).all():
        submissions.close_window(company_id, job_type, now=utcnow().replace(year=utcnow().year + 1))
    return Counter(db.session.execute(text(
        "SELECT r.email FROM recipients r JOIN jobs j ON j.id = r.job_id WHERE j.source = 'smtp'")).scalars())


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_sigkill_mid_burst_keeps_every_250_once(smtp, sender, fault_report):
    started = time.monotonic()
    burst = Burst(smtp.port, str(sender.id), sender.token, MESSAGES).start()
    for point in (0.2, 0.45, 0.7)[:KILLS]:
        burst.wait_done(int(MESSAGES * point))
        smtp.restart()
    burst.wait()
    stored, jobbed = stored_addresses(), jobbed_recipients()
    acked = set(burst.acked)
    lost = len(acked - set(stored))
    twice = sum(n - 1 for n in stored.values() if n > 1) + sum(n - 1 for n in jobbed.values() if n > 1)
    fault_report("smtp_sigkill", recipients=MESSAGES, faults=KILLS, lost=lost, duplicated=twice,
                 wall=time.monotonic() - started, acked=len(acked), unanswered=len(burst.unanswered),
                 kept_unanswered=len(set(stored) - acked))
    assert len(acked) + len(burst.unanswered) == MESSAGES and not burst.refused, burst.refused[:5]
    assert len(acked) > MESSAGES * 0.9
    assert lost == 0 and twice == 0, smtp.log_tail()
    assert set(jobbed) == set(stored) and set(stored) - acked <= set(burst.unanswered)


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_postgres_down_is_451_never_a_lost_250(pg, smtp, sender, fault_report):
    started = time.monotonic()
    # long sessions (a large smtpmaxbulk): the outage meets messages, not only sign-ins
    burst = Burst(smtp.port, str(sender.id), sender.token, MESSAGES, prefix="pg", per_session=MESSAGES).start()
    burst.wait_done(MESSAGES // 4)
    db.session.remove()  # this test's own connections would die with the server
    db.engine.dispose()
    pg.stop("fast")
    try:
        deadline = time.monotonic() + 30
        while sum(1 for _, code in burst.refused if code == 451) < 20:
            assert time.monotonic() < deadline, f"no 451 while the database is down\n{smtp.log_tail()}"
            time.sleep(0.05)
        acked_while_down = len(burst.acked)
        with smtplib.SMTP("127.0.0.1", smtp.port, timeout=10) as late, pytest.raises(smtplib.SMTPAuthenticationError) \
                as err:
            late.login(str(sender.id), sender.token)
        assert err.value.smtp_code == 454  # a sign-in meanwhile: temporary, not "wrong password"
        assert len(burst.acked) == acked_while_down  # no 250 while it is down
    finally:
        pg.start()
    burst.wait()
    stored, jobbed = stored_addresses(), jobbed_recipients()
    acked = set(burst.acked)
    lost = len(acked - set(stored))
    twice = sum(n - 1 for n in stored.values() if n > 1)
    refused = Counter(code for _, code in burst.refused)
    fault_report("smtp_postgres_restart", recipients=MESSAGES, faults=1, lost=lost, duplicated=twice,
                 wall=time.monotonic() - started, acked=len(acked), refused_451=refused[451],
                 unanswered=len(burst.unanswered))
    assert set(refused) == {451}
    assert lost == 0 and twice == 0
    assert not set(stored) & {address for address, _ in burst.refused}  # a 451 is never kept
    assert len(burst.acked) > MESSAGES // 4 + 50  # accepting again after the restart, by itself
    assert set(jobbed) == set(stored)
