"""Course completions to certificates: Moodle's ``course_completions`` rows
with ``timecompleted`` set, for users of the company's IOMAD company, become
``certificate`` jobs, exactly as ``course_completed`` events do (the
company's latest ``certificate`` template, its certificate template and
storage; ``tasks.certificates`` issues the PDFs).

The poll reads past a keyset watermark ``(timecompleted, id)`` kept on the
company's LMS settings, oldest first, in chunks. Each (user, course) is
recorded in ``lms_completions`` (unique), in the same transaction as its job
and the watermark's move, so a completion makes at most one certificate
however often it is read (a course completed again, a watermark reset).
Learners who cannot get one (deleted, suspended, no address) are recorded
as skipped with the reason. Without a ``certificate`` template nothing is
taken and the watermark stays, so nothing is lost while one is missing.
A completion whose ``timecompleted`` is older than the watermark when it
first appears (Moodle back-dating it) is not read.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import insert, select, text, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from core.models import CampaignSettings
from core.events import template_for
from core.db import db
from core.jobs import JobError, create_job
from core.lms.connection import LmsConfig, LmsError, config_for, failure, open_engine
from core.models.lms import LmsCompletion
from core.models import Company, Job, utcnow
from core.rendering import valid_email
from core.queue import enqueue_job


@dataclass
class CompletionsResult:
    taken: int = 0
    jobs: int = 0
    skipped: int = 0
    already_taken: int = 0
    job_ids: list[int] = field(default_factory=list)

    def lines(self) -> dict:
        return {"completions": self.taken, "certificate_jobs": self.jobs, "completions_skipped": self.skipped,
                "completions_already_taken": self.already_taken}


def _sql(cfg: LmsConfig, limit: int) -> str:
    return (f"SELECT cc.id, cc.userid, cc.course, cc.timecompleted, u.email, u.firstname, u.lastname, "
            f"u.deleted, u.suspended, c.fullname FROM {cfg.table('course_completions')} cc "
            f"JOIN {cfg.table('user')} u ON u.id = cc.userid JOIN {cfg.table('course')} c ON c.id = cc.course "
            f"WHERE cc.timecompleted IS NOT NULL AND (cc.timecompleted > :t OR (cc.timecompleted = :t AND cc.id > :i)) "
            f"AND EXISTS (SELECT 1 FROM {cfg.table('company_users')} cu WHERE cu.userid = cc.userid "
            f"AND cu.companyid = :company) ORDER BY cc.timecompleted, cc.id LIMIT {int(limit)}")


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


def poll(company: Company, *, chunk: int, max_rows: int) -> CompletionsResult:
    cfg = config_for(company)
    cfg.require()
    if not cfg.completions:
        raise LmsError("course completions to certificates is off for the company (lms_completions)")
    tpl = template_for(company.id, "certificate")
    if tpl is None:
        raise LmsError("no email template of type certificate: add one before completions can be taken")
    result = CompletionsResult()
    engine = open_engine(cfg.url, read_only=True)
    try:
        while result.taken + result.skipped + result.already_taken < max_rows:
            row = db.session.execute(CampaignSettings.scoped(company.id)).scalar_one()
            mark = (int(row.completions_after_time or 0), int(row.completions_after_id or 0))
            db.session.rollback()
            try:
                with engine.connect() as conn:
                    rows = conn.execute(text(_sql(cfg, chunk)), {"t": mark[0], "i": mark[1],
                                                                  "company": cfg.iomad_company_id}).all()
            except SQLAlchemyError as exc:
                raise failure("could not be read", exc) from None
            if not rows:
                break
            _take(company.id, tpl.name, rows, result)
            if len(rows) < chunk:
                break
    finally:
        engine.dispose()
    return result


def _take(company_id: int, template: str, rows, result: CompletionsResult) -> None:
    """One chunk: its jobs, its lms_completions rows and the watermark, in one transaction."""
    known = set(db.session.execute(select(LmsCompletion.lms_user_id, LmsCompletion.lms_course_id).where(
        LmsCompletion.company_id == company_id,
        LmsCompletion.lms_user_id.in_({int(r.userid) for r in rows}))).tuples())
    seen: set[tuple[int, int]] = set()
    fresh, skipped = [], []
    for r in rows:
        key = (int(r.userid), int(r.course))
        if key in known or key in seen:
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
    last = rows[-1]

    def finish_chunk() -> None:
        """The skipped learners and the watermark's move: in the chunk's last transaction."""
        if skipped:
            db.session.execute(insert(LmsCompletion.__table__), [
                {"company_id": company_id, "lms_user_id": int(r.userid), "lms_course_id": int(r.course),
                 "timecompleted": int(r.timecompleted), "skipped": _reason(r), "created_at": now} for r in skipped])
        db.session.execute(update(CampaignSettings).where(CampaignSettings.company_id == company_id).values(
            completions_after_time=int(last.timecompleted), completions_after_id=int(last.id)))

    made: list[Job] = []
    try:
        if not lists:
            finish_chunk()
            db.session.commit()
        for n, members in enumerate(lists):
            payload = {"type": "certificate", "template": template,
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
