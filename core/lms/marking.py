"""Settling the IOMAD rows we took (``lms_email_rows``), after the provider answered.

A row is settled once its recipient and the recipients of its copies are
final (``mark_finished``):

- its recipient was ``sent``: the Moodle row gets ``sent`` = the time the
  provider accepted it (our ``recipients.sent_at``);
- its recipient failed for good (refused at take-over, failed, bounced):
  ``sent`` = the time we gave up, so IOMAD never resends it (IOMAD marks a
  row it could not send the same way), and ``lms_email_rows`` keeps why;
- its recipient was never attempted (``suppressed`` by a bounce, complaint or
  manual list, or its job ``cancelled``): the row is ``held``. Its Moodle
  row is left unmarked: no row is marked sent without a delivery attempt that
  ended final. ``lms_email_rows`` keeps the reason (the list that stopped it),
  the row is not taken again, and IOMAD's own task would send it if it were
  switched back on. The copies are sent or not on their own.

Moodle's rows are updated in one ``UPDATE ... SET sent = CASE id ...`` per
thousand rows, guarded by ``sent IS NULL``; ours comes after it, so a crash
between them only repeats an update that changes nothing. It runs after each
batch of an LMS job (``tasks.lms.mark_rows``) and at every poll.
"""
from __future__ import annotations

from datetime import UTC

from sqlalchemy import or_, select, text
from sqlalchemy.exc import SQLAlchemyError

from core.bulk import execute_for_ids
from core.db import db
from core.lms.connection import LmsConfig, engine_for, failure
from core.models import R_CANCELLED, R_SENT, R_SUPPRESSED, RECIPIENT_FINAL, LmsEmailCopy, LmsEmailRow, Recipient, utcnow
from core.models.lms import ROW_FAILED, ROW_HELD, ROW_SENT

#: our recipient statuses that mean a delivery attempt ended for good without the mail (failed, bounced)
FINAL_FAILED = RECIPIENT_FINAL - {R_SENT, R_SUPPRESSED, R_CANCELLED}
#: final without an attempt: the row is held, its Moodle row left unmarked
NOT_ATTEMPTED = frozenset({R_SUPPRESSED, R_CANCELLED})
MARK_CHUNK = 2000
UPDATE_CHUNK = 1000


def _utc_timestamp(moment) -> int:
    return int(moment.replace(tzinfo=UTC).timestamp())


def _settle(r, copies_open: bool, stamp: int):
    """(status, error, Moodle ``sent`` or None) of one row, or None while it is not settled."""
    if r.status == ROW_FAILED:
        return ROW_FAILED, r.error, stamp
    if r.recipient_id is None:
        return ROW_FAILED, "the job was deleted before sending", stamp
    if r.rstatus not in RECIPIENT_FINAL or copies_open:
        return None
    if r.rstatus == R_SENT:
        return ROW_SENT, None, _utc_timestamp(r.sent_at) if r.sent_at else stamp
    if r.rstatus in NOT_ATTEMPTED:
        return ROW_HELD, (r.rerror or r.rstatus)[:500], None
    return ROW_FAILED, (r.rerror or r.rstatus)[:500], stamp


def _open_copies(row_ids: list[int]) -> set[int]:
    """The rows (of ``row_ids``) with a copy whose recipient is not final yet."""
    if not row_ids:
        return set()
    found = db.session.execute(select(LmsEmailCopy.row_id, Recipient.status).join(
        Recipient, Recipient.id == LmsEmailCopy.recipient_id).where(LmsEmailCopy.row_id.in_(row_ids))).all()
    return {row_id for row_id, status in found if status not in RECIPIENT_FINAL}


def mark_finished(company_id: int, cfg: LmsConfig, conn=None) -> int:
    """Settle the company's rows whose outcome is known; returns how many were settled.

    ``conn``: a connection to the LMS database the caller holds (a poll), else the process's own."""
    total = 0
    r_, rc = LmsEmailRow.__table__, Recipient.__table__
    while True:
        rows = db.session.execute(  # the unsettled rows whose own recipient is final (or gone)
            select(r_.c.id, r_.c.lms_row_id, r_.c.status, r_.c.error, r_.c.recipient_id,
                   rc.c.status.label("rstatus"), rc.c.error.label("rerror"), rc.c.sent_at)
            .select_from(r_.outerjoin(rc, rc.c.id == r_.c.recipient_id))
            .where(r_.c.company_id == company_id, r_.c.marked_at.is_(None),
                   or_(r_.c.status == ROW_FAILED, r_.c.recipient_id.is_(None), rc.c.status.in_(RECIPIENT_FINAL)))
            .order_by(r_.c.id).limit(MARK_CHUNK)).all()
        open_copies = _open_copies([r.id for r in rows if r.status != ROW_FAILED and r.rstatus in RECIPIENT_FINAL])
        db.session.rollback()
        now = utcnow()
        stamp = int(now.timestamp())
        done = []  # (our id, lms row id, status, error, Moodle sent or None)
        for r in rows:
            settled = _settle(r, r.id in open_copies, stamp)
            if settled:
                done.append((r.id, r.lms_row_id, *settled))
        if done:
            _mark_moodle(cfg, conn, [(row_id, sent) for _i, row_id, _s, _e, sent in done if sent is not None], stamp)
            _record(done, now)
            total += len(done)
        if len(rows) < MARK_CHUNK or not done:  # the rest (if any) waits for its copies: the next mark gets it
            return total


def _record(done: list[tuple], now) -> None:
    """Our side: one UPDATE per (status, error, sent) group and thousand rows (rows sent in the same
    second share one)."""
    groups: dict[tuple, list[int]] = {}
    for our_id, _row, status, error, sent in done:
        groups.setdefault((status, error, sent), []).append(our_id)
    sql = (f"UPDATE {LmsEmailRow.__tablename__} SET status = :status, error = :error, sent_time = :sent, "
           "marked_at = :now WHERE {ids}")  # one array parameter on PostgreSQL, not a thousand to compile
    for (status, error, sent), ids in groups.items():
        for start in range(0, len(ids), UPDATE_CHUNK):
            execute_for_ids(sql, ids[start:start + UPDATE_CHUNK],
                            {"status": status, "error": error, "sent": sent, "now": now})
    db.session.commit()


def _mark_moodle(cfg: LmsConfig, conn, marks: list[tuple[int, int]], stamp: int) -> None:
    """Set ``sent`` on the Moodle rows: one UPDATE per thousand rows (``CASE id WHEN ...``)."""
    if not marks:
        return
    own = conn is None
    try:
        if own:
            conn = engine_for(cfg.db_url, read_only=False).connect()
        for start in range(0, len(marks), UPDATE_CHUNK):
            part = marks[start:start + UPDATE_CHUNK]
            values = {sent for _row, sent in part}
            if len(values) == 1:
                sent_sql = str(int(next(iter(values))))
            else:
                sent_sql = "CASE id " + " ".join(f"WHEN {int(row)} THEN {int(sent)}" for row, sent in part) + " END"
            ids = ", ".join(str(int(row)) for row, _sent in part)
            conn.execute(text(f"UPDATE {cfg.table('email')} SET sent = {sent_sql}, modifiedtime = :now "
                              f"WHERE sent IS NULL AND id IN ({ids})"), {"now": stamp})  # autocommitted
    except SQLAlchemyError as exc:
        raise failure("could not be updated", exc) from None
    finally:
        if own and conn is not None:
            conn.close()
