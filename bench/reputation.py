"""Bench: what the reputation guard and the company rates cost on a big company (PostgreSQL).

Seeds one company with ``--recipients`` recipients handed to the provider over the last week (5 % of
them bounced, a complaint per 2,000) in a fresh database, ANALYZEs, then times in the same run:
- a bare round trip (``SELECT 1``): the baseline;
- the guard's look after a chunk with a bounce (``core.counts.recent`` over the last 1,000 sends and
  the verdict): what each such chunk pays;
- ``core.reputation.holds`` (what every batch run asks as it starts);
- the company's 30-day rates (``core.counts.company_rates``): what the Suppressions page and the
  overview read.
Each figure is the median of ``--rounds`` calls, with its ratio to the bare round trip.

Usage: .venv/bin/python bench/reputation.py [--recipients 200000] [--rounds 50]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.bulk_send import create_database, flask  # noqa: E402
from tests.support.servers import RedisServer  # noqa: E402

SEED = """
INSERT INTO jobs (company_id, type, status, source, subject, email_count, emails_sent, emails_failed,
                  emails_suppressed, emails_bounced, emails_uncertain, priority, created_at)
VALUES (:c, 'reengagement', 'processing', 'api', 'bench', :n, 0, 0, 0, 0, 0, 'bulk', now());
INSERT INTO recipients (company_id, job_id, email, status, attempts, sent_at)
SELECT :c, (SELECT max(id) FROM jobs), 'r' || g || '@example.com',
       CASE WHEN g % 20 = 0 THEN 'bounced' ELSE 'sent' END, 1,
       now() AT TIME ZONE 'utc' - (g * interval '7 days' / :n)
FROM generate_series(1, :n) AS g;
INSERT INTO bounce_events (company_id, event_key, source, kind, email, created_at)
SELECT :c, 'k' || g, 'ses', 'complaint', 'r' || g || '@example.com', now() AT TIME ZONE 'utc' - interval '1 day'
FROM generate_series(1, :n / 2000) AS g;
"""


def median_ms(call, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        call()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--recipients", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--explain", action="store_true", help="print the window query's plan")
    args = parser.parse_args()
    url, drop = create_database(sqlite=False)
    try:
        with RedisServer() as redis:
            env = {**os.environ, "DATABASE_URL": url, "REDIS_URL": redis.url, "OFFLOAD_DEV": "1",
                   "SECRET_KEY": "bench"}
            flask(env, "db", "upgrade")
            company_id = int(flask(env, "company", "create", "Bench Co").split("id: ")[1].split()[0])
            os.environ.update(DATABASE_URL=url, REDIS_URL=redis.url, OFFLOAD_DEV="1", SECRET_KEY="bench")
            from sqlalchemy import text

            from core import counts, reputation
            from core.db import db
            from core.models import Job
            from service import create_app

            with create_app().app_context():
                for statement in SEED.strip().split(";\n"):
                    db.session.execute(text(statement), {"c": company_id, "n": args.recipients})
                db.session.commit()
                db.session.execute(text("ANALYZE"))
                db.session.commit()
                job_id = db.session.execute(text("SELECT max(id) FROM jobs")).scalar()
                window = counts.recent(company_id, reputation.WINDOW)
                print(f"{args.recipients:,} recipients of one company on PostgreSQL; the window: {window.sends} "
                      f"sends, {window.bounces} bounces, {window.complaints} complaints")

                if args.explain:
                    seen: list[str] = []
                    from sqlalchemy import event
                    listener = lambda conn, cur, statement, params, ctx, many: seen.append((statement, params))  # noqa: E731
                    event.listen(db.engine, "before_cursor_execute", listener)
                    counts.recent(company_id, reputation.WINDOW)
                    event.remove(db.engine, "before_cursor_execute", listener)
                    statement, params = seen[0]
                    raw = db.session.connection().connection.dbapi_connection
                    with raw.cursor() as cur:
                        cur.execute("EXPLAIN (ANALYZE, BUFFERS) " + statement, params)
                        print("\n".join(row[0] for row in cur.fetchall()))

                def look():
                    reputation.verdict(counts.recent(company_id, reputation.WINDOW), reputation.thresholds(company_id))
                    db.session.rollback()

                figures = {
                    "bare round trip (SELECT 1)": lambda: db.session.execute(text("SELECT 1")).scalar(),
                    "the guard's look after a chunk with a bounce": look,
                    "reputation.holds at a batch run's start": lambda: reputation.holds(job_id),
                    "company rates over 30 days (Suppressions, overview)": lambda: counts.company_rates(company_id),
                }
                assert db.session.get(Job, job_id) is not None
                bare = None
                for name, call in figures.items():
                    ms = median_ms(call, args.rounds)
                    bare = bare or ms
                    print(f"{name}: {ms:.2f} ms (median of {args.rounds}), {ms / bare:.1f}x the bare round trip")
    finally:
        drop()


if __name__ == "__main__":
    main()
