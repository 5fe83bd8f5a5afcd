"""Helpers of the LMS connector's tests: a company connected to a Moodle/IOMAD
database (``tests.support.moodle``), learners, polling through the CLI."""
from __future__ import annotations

from core import companies
from core.db import db
from tests.support.app import run_worker_burst
from tests.support.jobs import run_scheduled_now
from tests.support.moodle import MoodleDb

ACME_IOMAD, OTHER_IOMAD = 5, 6
#: (engine, prefix): every engine with Moodle's default prefix and with another one
ENGINES = [("mysql", "mdl_"), ("postgresql", "mdl_"), ("mysql", "iomad2_"), ("postgresql", "lms_")]


def connect(company, moodle: MoodleDb, **extra) -> None:
    """Point the company at the Moodle database (as ``company configure`` would)."""
    values = {"lms_url": moodle.url, "lms_prefix": moodle.prefix, "iomad_company_id": str(ACME_IOMAD),
              "iomad_email_queue": "1", **{k: str(v) for k, v in extra.items()}}
    companies.configure(company.company, values)
    db.session.commit()


def learners(n: int, start: int = 100, domain: str = "acme.test") -> list[dict]:
    return [{"id": start + i, "email": f"learner{start + i}@{domain}", "firstname": f"Ann{start + i}"}
            for i in range(n)]


def send_all(app) -> None:
    """Run the workers until the queue is empty, the delayed marking of IOMAD rows included."""
    run_worker_burst(app)
    run_scheduled_now()
    run_worker_burst(app)


def poll(runner, company) -> dict:
    """``flask lms poll ID``: its ``key: value`` lines and exit code."""
    result = runner.invoke(args=["lms", "poll", str(company.id)])
    lines = dict(line.split(": ", 1) for line in result.output.strip().splitlines() if ": " in line)
    lines["exit_code"] = result.exit_code
    db.session.expire_all()
    return lines


def add_completions(moodle: MoodleDb, rows: list[tuple]) -> None:
    """Moodle ``course_completions`` rows: (userid, course, timecompleted or None)."""
    moodle.execute(f"INSERT INTO {moodle.t('course_completions')} (userid, course, timeenrolled, timecompleted) "
                   "VALUES (:u, :c, 0, :t)", [{"u": u, "c": c, "t": t} for u, c, t in rows])
