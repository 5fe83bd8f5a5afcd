"""Course completions to certificates: Moodle's ``course_completions`` rows
with ``timecompleted`` set, for users of the company's IOMAD company, become
``certificate`` jobs, exactly as ``course_completed`` events do (the
company's latest ``certificate`` template, its certificate template and
storage; ``tasks.certificates`` issues the PDFs).

A poll reads in two passes, in chunks, with watermarks kept on the company's
LMS settings:

1. by id: every completed row above ``completions_scan_id`` (the highest id
   read), whatever its ``timecompleted``, so a completion written later with
   an earlier ``timecompleted`` (an import, a back-dated completion) is read;
2. by time, for the rows the first pass had already passed (Moodle creates a
   learner's row at enrolment and sets ``timecompleted`` later): those
   completed after ``completions_after_time`` minus ``LOOKBACK_S``, the
   window in which Moodle's completion task writes a ``timecompleted``
   earlier than the moment it writes it.

Each (user, course) is recorded in ``lms_completions`` (unique), in the same
transaction as its job and the watermarks' move, so a completion makes at
most one certificate however often it is read (the look-back, a course
completed again, a watermark reset). A learner in two IOMAD companies gets
it from one: the company IOMAD's ``company_course`` gives the course to (the
lowest such company the learner is in), else the learner's first company
(its first ``company_users`` row). Learners who cannot get one (deleted,
suspended, no address) are recorded as skipped with the reason. Without a
``certificate`` template nothing is taken and the watermarks stay, so nothing
is lost while one is missing. Not read: a row the first pass passed while it
was incomplete whose ``timecompleted`` is later set to a time older than the
look-back window.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Row, insert, select, text, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from core.db import db
from core.events import template_for
from core.jobs import JobError, create_job
from core.lms.connection import LmsConfig, LmsError, config_for, engine_for, failure
from core.models import CampaignSettings, Company, Job, utcnow
from core.models.lms import LmsCompletion
from core.queue import enqueue_job
from core.rendering import valid_email


@dataclass
class CompletionsResult:
    taken: int = 0
    jobs: int = 0
    skipped: int = 0
    already_taken: int = 0
    rechecked: int = 0
    read: int = 0
    job_ids: list[int] = field(default_factory=list)

    def lines(self) -> dict:
        return {"completions": self.taken, "certificate_jobs": self.jobs, "completions_skipped": self.skipped,
                "completions_already_taken": self.already_taken, "completions_rechecked": self.rechecked}


#: how far back the time pass reads again: Moodle's completion task writes ``timecompleted`` late
LOOKBACK_S = 3600


def _owner(cfg: LmsConfig) -> str:
    """The IOMAD company a completion belongs to: company_course's (one the learner is in), else the
    learner's first company."""
    cu, cc_ = cfg.table("company_users"), cfg.table("company_course")
    return (f"COALESCE((SELECT MIN(k.companyid) FROM {cc_} k JOIN {cu} m ON m.companyid = k.companyid "
            f"AND m.userid = cc.userid WHERE k.courseid = cc.course), "
            f"(SELECT f.companyid FROM {cu} f WHERE f.userid = cc.userid ORDER BY f.id LIMIT 1))")


def _select(cfg: LmsConfig) -> str:
    return (f"SELECT cc.id, cc.userid, cc.course, cc.timecompleted, u.email, u.firstname, u.lastname, "
            f"u.deleted, u.suspended, c.fullname FROM {cfg.table('course_completions')} cc "
            f"JOIN {cfg.table('user')} u ON u.id = cc.userid JOIN {cfg.table('course')} c ON c.id = cc.course "
            f"WHERE cc.timecompleted IS NOT NULL AND cc.userid IN (SELECT m.userid FROM {cfg.table('company_users')} m "
            f"WHERE m.companyid = :company) AND {_owner(cfg)} = :company ")


def _by_id_sql(cfg: LmsConfig, limit: int) -> str:
    return _select(cfg) + f"AND cc.id > :i AND cc.id <= :ceiling ORDER BY cc.id LIMIT {int(limit)}"


def _by_time_sql(cfg: LmsConfig, limit: int) -> str:
    return _select(cfg) + (f"AND cc.id <= :scanned AND (cc.timecompleted > :t OR (cc.timecompleted = :t AND "
                           f"cc.id > :i)) ORDER BY cc.timecompleted, cc.id LIMIT {int(limit)}")


def _learner(r) -> dict:
    """A certificate recipient's data, as a ``course_completed`` event would carry it."""
    first, lastname = (r.firstname or "").strip(), (r.lastname or "").strip()
    return {"learner_name": " ".join(p for p in (first, lastname) if p), "firstname": first, "lastname": lastname,
            "course_name": r.fullname or "", "completion_date": int(r.timecompleted), "lms_course_id": int(r.course)}


def _reason(row) -> str | None:
    if int(row.deleted or 0):
        return "the user is deleted"
    if int(row.suspended or 0):
        return "the user is suspended"
    if not valid_email((row.email or "").strip()):
        return "the user has no valid email address"
    return None


def poll(company: Company, *, chunk: int, max_rows: int, now: int | None = None) -> CompletionsResult:
    cfg = config_for(company)
    cfg.require()
    if not cfg.completions:
        raise LmsError("course completions to certificates is off for the company (lms_completions)")
    tpl = template_for(company.id, "certificate")
    if tpl is None:
        raise LmsError("no email template of type certificate: add one before completions can be taken")
    result = CompletionsResult()
    moment = int(now if now is not None else time.time())
    row = db.session.execute(CampaignSettings.scoped(company.id)).scalar_one()
    scanned, t_mark = int(row.completions_scan_id or 0), int(row.completions_after_time or 0)
    passed = scanned  # the rows the first pass of earlier polls read
    db.session.rollback()
    try:
        with engine_for(cfg.db_url, read_only=True).connect() as conn:
            def read(sql: str, params: dict):
                return conn.execute(text(sql), {"company": cfg.iomad_company_id, **params}).all()

            # 1. new rows, by id, up to the highest id there is now (past the other companies' rows too)
            ceiling = int(conn.execute(text(f"SELECT max(id) FROM {cfg.table('course_completions')}")).scalar()
                          or 0)
            while result.read < max_rows and scanned < ceiling:
                rows = read(_by_id_sql(cfg, chunk), {"i": scanned, "ceiling": ceiling})
                done = len(rows) < chunk
                scanned = ceiling if done else int(rows[-1].id)
                t_mark = max([t_mark] + [min(int(r.timecompleted), moment) for r in rows])
                _take(company.id, tpl.name, rows, result, {"completions_scan_id": scanned,
                                                            "completions_after_time": t_mark})
                if done:
                    break
            # 2. rows passed before, completed since the time watermark (less the look-back)
            after = (max(0, t_mark - LOOKBACK_S), 0)
            while result.read < max_rows:
                rows = read(_by_time_sql(cfg, chunk), {"scanned": passed, "t": after[0], "i": after[1]})
                if not rows:
                    break
                after = (int(rows[-1].timecompleted), int(rows[-1].id))
                t_mark = max(t_mark, min(after[0], moment))
                _take(company.id, tpl.name, rows, result, {"completions_after_time": t_mark,
                                                            "completions_after_id": after[1]}, recheck=True)
                if len(rows) < chunk:
                    break
    except SQLAlchemyError as exc:
        raise failure("could not be read", exc) from None
    return result


def _take(company_id: int, template: str, rows, result: CompletionsResult, marks: dict,
          recheck: bool = False) -> None:
    """One chunk: its jobs, its lms_completions rows and the watermarks' move (``marks``), in one
    transaction. ``recheck``: the look-back pass, where taken rows are read again on purpose."""
    known = set(db.session.execute(select(LmsCompletion.lms_user_id, LmsCompletion.lms_course_id).where(
        LmsCompletion.company_id == company_id,
        LmsCompletion.lms_user_id.in_({int(r.userid) for r in rows}))).tuples())
    seen: set[tuple[int, int]] = set()
    fresh: list[Row[Any]] = []
    skipped: list[Row[Any]] = []
    for r in rows:
        key = (int(r.userid), int(r.course))
        if key in known or key in seen:
            if recheck:
                result.rechecked += 1
            else:
                result.already_taken += 1
            continue
        seen.add(key)
        (skipped if _reason(r) else fresh).append(r)
    buckets: list[tuple[list, set[str]]] = []  # no two certificates for one address in a job (duplicate check)
    for r in fresh:
        address = r.email.strip().lower()
        for members, addresses in buckets:
            if address not in addresses:
                members.append(r)
                addresses.add(address)
                break
        else:
            buckets.append(([r], {address}))
    lists = [members for members, _ in buckets]
    now = utcnow()
    result.read += len(rows)

    def finish_chunk() -> None:
        """The skipped learners and the watermark's move: in the chunk's last transaction."""
        if skipped:
            db.session.execute(insert(LmsCompletion.__table__), [
                {"company_id": company_id, "lms_user_id": int(r.userid), "lms_course_id": int(r.course),
                 "timecompleted": int(r.timecompleted), "skipped": _reason(r), "created_at": now} for r in skipped])
        db.session.execute(update(CampaignSettings).where(CampaignSettings.company_id == company_id).values(
            **marks))

    made: list[Job] = []
    try:
        if not lists:
            finish_chunk()
            db.session.commit()
        for n, members in enumerate(lists):
            payload = {"type": "certificate", "template": template, "on_missing": "fail_recipient",
                       "recipients": [{"email": r.email.strip(), "data": _learner(r)} for r in members]}

            def record(job: Job, members=members, final=n == len(lists) - 1) -> None:
                db.session.execute(insert(LmsCompletion.__table__), [
                    {"company_id": company_id, "lms_user_id": int(r.userid), "lms_course_id": int(r.course),
                     "timecompleted": int(r.timecompleted), "job_id": job.id, "created_at": now} for r in members])
                if final:
                    finish_chunk()

            job, _ = create_job(company_id, payload, source="lms", before_commit=record,
                                max_recipients=len(members))
            made.append(job)
            enqueue_job(job)
    except IntegrityError:
        db.session.rollback()
        raise LmsError("another poll of this company is taking the same completions; stopped this one") from None
    except JobError as exc:
        db.session.rollback()
        raise LmsError(f"the certificate template cannot make a job ({exc.code}: {exc.message})") from None
    result.jobs += len(made)
    result.job_ids += [job.id for job in made]
    result.taken += len(fresh)
    result.skipped += len(skipped)
