"""Bench: IOMAD's email queue taken over from MariaDB and sent end to end.

Starts what it needs (a fresh Moodle/IOMAD database with IOMAD's and Moodle's
real tables on the machine's MariaDB at 127.0.0.1:3306, a fresh PostgreSQL
database for the service, a private redis-server, aws-ses-v2-local, N RQ
workers polling every second), queues ``--rows`` IOMAD email rows written as
IOMAD's ``queue_for_cron`` writes them (``user_create``, a template object in
the headers), switches the company's ``iomad_email_queue`` on and prints:
- the wall time until every row is marked sent in Moodle, and rows/s,
- a bare script doing the same work with no queue or service database (read
  the due rows joined to their users, the same SendBulkEmail calls of 50,
  the same UPDATE of ``sent``), and the bare SES calls alone,
- the ratio (the service's overhead; the goal is at most 2x), from the switch
  command's start and from its return (a flask CLI process starting is slow
  on a loaded machine),
- the statements the connector sent to the Moodle database per 1,000 rows
  (every one: a counting proxy sits between the workers and MariaDB; the
  goal is at most 30), and its connections.

Measured 2026-12-08 (2 cores, load average 1.9-3.2): 12.1-12.7 s against 2.3-2.5 s for the bare
script, 5.1-5.2x (6.1x and 5.6x for the code before, in the same window), 0.43-0.48 ms of worker CPU
per row, 5.5 statements per 1,000 rows; README.md, "Measured", has the history.

Usage: .venv/bin/python bench/lms_takeover.py [--rows 20000] [--workers 2] [--trace] [--profile DIR]
(``--trace``: rows taken, accepted and still unmarked every second; ``--profile``: each worker under
cProfile, its stats written to ``DIR/worker-N.prof`` when it stops.)
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from sqlalchemy import bindparam, create_engine, text  # noqa: E402
from sqlalchemy.pool import NullPool  # noqa: E402

from bench.bulk_send import BIN, create_database, flask  # noqa: E402
from tests.support.moodle import MoodleDb  # noqa: E402
from tests.support.mysql_counter import MysqlCounter  # noqa: E402
from tests.support.servers import RedisServer, SesLocal  # noqa: E402

IOMAD = 5


def fill(moodle: MoodleDb, rows: int, tag: str) -> None:
    users = [{"id": 1000 + i, "email": f"{tag}{i}@bench.test", "firstname": f"N{i}"} for i in range(rows)]
    for start in range(0, rows, 5000):
        part = users[start:start + 5000]
        moodle.add_users(part, IOMAD)
        moodle.queue_emails([{"userid": u["id"], "companyid": IOMAD, "templatename": "user_create",
                              "subject": f"Welcome {u['firstname']}",
                              "body": f"<p>Hi {u['firstname']}, your password is <b>Pw{u['id']}!</b></p>"}
                             for u in part])


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a running process and its waited-for children (Linux ``/proc``)."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def bare(moodle: MoodleDb, ses_url: str, with_db: bool) -> float:
    """The same SES calls, pre-rendered, from a plain loop (and, ``with_db``, the same reads and updates)."""
    import boto3
    from botocore.config import Config

    client = boto3.client("sesv2", endpoint_url=ses_url, region_name="us-east-1", aws_access_key_id="x",
                          aws_secret_access_key="y", config=Config(retries={"total_max_attempts": 1}))
    template = {"Subject": "{{{s}}}", "Text": "{{{t}}}", "Html": "{{{h}}}"}
    start = time.perf_counter()
    with moodle.engine.connect() as conn:  # one connection, as a plain script would hold
        rows = conn.execute(text(
            f"SELECT e.id, e.subject, e.body, u.email FROM {moodle.t('email')} e JOIN {moodle.t('user')} u "
            "ON u.id = e.userid WHERE e.companyid = :c AND e.sent IS NULL AND e.due <= :now ORDER BY e.id"),
            {"c": IOMAD, "now": int(time.time())}).all()
        conn.commit()
        update = text(f"UPDATE {moodle.t('email')} SET sent = :t, modifiedtime = :t WHERE id IN :ids") \
            .bindparams(bindparam("ids", expanding=True))
        for i in range(0, len(rows), 50):
            chunk = rows[i:i + 50]
            entries = [{"Destination": {"ToAddresses": [r.email]}, "ReplacementEmailContent": {
                "ReplacementTemplate": {"ReplacementTemplateData": json.dumps({"s": r.subject, "t": r.body,
                                                                                "h": r.body})}}} for r in chunk]
            client.send_bulk_email(FromEmailAddress="noreply@bench.test", BulkEmailEntries=entries,
                                   DefaultContent={"Template": {"TemplateContent": template, "TemplateData": "{}"}})
            if with_db:
                conn.execute(update, {"t": int(time.time()), "ids": [r.id for r in chunk]})
                conn.commit()
    assert len(rows) > 0
    return time.perf_counter() - start


def wait_for_workers(redis_url: str, count: int, limit_s: float = 300) -> None:
    """Until ``count`` RQ workers are registered and listening (a worker's start-up, the app's imports, takes
    10-15 s on a loaded machine: a fixed sleep switched on before they were up and counted their start)."""
    import redis
    from rq import Worker

    conn = redis.Redis.from_url(redis_url)
    end = time.monotonic() + limit_s
    while Worker.count(connection=conn) < count:
        if time.monotonic() > end:
            raise SystemExit(f"{count} workers not up after {limit_s:.0f} s")
        time.sleep(0.2)
    time.sleep(1)  # their first scheduler ticks and sweeps
    conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--trace", action="store_true", help="print rows taken and sent every second")
    parser.add_argument("--profile", metavar="DIR", help="run each worker under cProfile, its stats in DIR")
    args = parser.parse_args()

    moodle = MoodleDb("mysql", "mdl_")
    db_url, drop = create_database(sqlite=False)
    procs: list[subprocess.Popen] = []
    try:
        moodle.add_company(IOMAD, "Bench IOMAD")
        fill(moodle, args.rows, "user")
        with RedisServer() as redis_server, SesLocal() as ses, MysqlCounter() as counter:
            lms_url = moodle.url.replace("127.0.0.1:3306", f"127.0.0.1:{counter.port}")
            env = {**os.environ, "DATABASE_URL": db_url, "REDIS_URL": redis_server.url, "SECRET_KEY": "bench",
                   "OFFLOAD_DEV": "1", "OFFLOAD_ALLOW_PRIVATE_ENDPOINTS": "1", "OFFLOAD_LMS_POLL_S": "1"}
            flask(env, "db", "upgrade")
            company = dict(line.split(": ", 1) for line in flask(env, "company", "create", "Bench").splitlines())
            flask(env, "company", "configure", company["id"], "provider=aws", f"aws_endpoint_url={ses.url}",
                  "aws_region=us-east-1", "aws_access_key=AKIABENCH", "aws_secret_key=bench",
                  "sender=noreply@bench.test", f"lms_url={lms_url}", f"iomad_company_id={IOMAD}")
            for i in range(args.workers):
                prof = [sys.executable, "-m", "cProfile", "-o", os.path.join(args.profile, f"worker-{i}.prof")] \
                    if args.profile else []
                procs.append(subprocess.Popen([*prof, os.path.join(BIN, "flask"), "--app", "wsgi", "worker",
                                               "--name", f"bench-lms-{i}"], cwd=ROOT, env=env,
                                              stdout=open(f"/tmp/bench-lms-worker-{i}.log", "w"),
                                              stderr=subprocess.STDOUT))
            wait_for_workers(redis_server.url, args.workers)  # started, not a guess: at load they take 10+ s
            counter.reset()
            cpu_before = sum(cpu_seconds(p.pid) for p in procs)
            t0 = time.perf_counter()
            flask(env, "company", "configure", company["id"], "iomad_email_queue=1")
            switched = time.perf_counter() - t0  # the CLI process's own start-up, not the connector's work
            ours = create_engine(db_url.replace("postgresql://", "postgresql+psycopg://", 1), poolclass=NullPool)
            phases: dict[str, float] = {}
            traced = t0
            while True:
                left = moodle.all(f"SELECT count(*) FROM {moodle.t('email')} WHERE sent IS NULL")[0][0]
                with ours.connect() as conn:
                    taken, sent = conn.execute(text(
                        "SELECT (SELECT count(*) FROM lms_email_rows), "
                        "(SELECT count(*) FROM recipients WHERE status = 'sent')")).one()
                if args.trace and time.perf_counter() - traced >= 1:
                    traced = time.perf_counter()
                    print(f"  {traced - t0:5.1f} s: taken {taken}, accepted {sent}, unmarked {left}", flush=True)
                for name, done in (("taken", taken), ("accepted", sent)):
                    if done >= args.rows and name not in phases:
                        phases[name] = time.perf_counter() - t0
                if not left:
                    break
                if time.perf_counter() - t0 > 1800:
                    raise SystemExit(f"{left} rows still unsent after 30 minutes")
                time.sleep(0.2)
            wall = time.perf_counter() - t0
            cpu = sum(cpu_seconds(p.pid) for p in procs) - cpu_before
            ours.dispose()
            statements, connections, shapes = dict(counter.counts), counter.connections, counter.shapes.most_common(12)
            store = ses.store()
            dupes = len(store) - len({m["destination"]["to"][0] for m in store})
            for p in procs:
                p.terminate()
            for p in procs:  # gone before the bare script runs (and, profiled, their stats written)
                p.wait(timeout=60)
            ses.clear()
            moodle.execute(f"UPDATE {moodle.t('email')} SET sent = NULL")
            bare_cpu = time.process_time()
            bare_db = bare(moodle, ses.url, with_db=True)
            bare_cpu = time.process_time() - bare_cpu
            ses.clear()
            moodle.execute(f"UPDATE {moodle.t('email')} SET sent = NULL")
            bare_ses = bare(moodle, ses.url, with_db=False)
    finally:
        for p in procs:
            p.kill()
        drop()
        moodle.drop()

    n = args.rows
    print(f"load average at the end: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    print(f"IOMAD rows: {n} on MariaDB; service database: postgresql; workers: {args.workers}; "
          f"poll every 1 s, chunks of 500")
    print(f"in SES store {len(store)}, duplicates {dupes}")
    print(f"switch on -> every row sent and marked in Moodle: {wall:.1f} s ({n / wall:,.0f} rows/s); every row "
          f"taken at {phases.get('taken', wall):.1f} s, accepted by SES at {phases.get('accepted', wall):.1f} s")
    print(f"bare script, read + same SES calls + UPDATE sent: {bare_db:.1f} s ({n / bare_db:,.0f} rows/s)")
    print(f"bare script, the SES calls alone: {bare_ses:.1f} s ({n / bare_ses:,.0f} rows/s)")
    print(f"service overhead: {wall / bare_db:.2f}x the bare read-send-update script (goal <= 2x); "
          f"from the switch command's return ({switched:.1f} s in: a flask CLI process starting): "
          f"{wall - switched:.1f} s, {(wall - switched) / bare_db:.2f}x")
    print(f"CPU of the worker processes: {cpu:.1f} s ({cpu * 1000 / n:.2f} ms per row); of the bare script: "
          f"{bare_cpu:.1f} s ({bare_cpu * 1000 / n:.2f} ms per row); servers (databases, Redis, SES) not counted")
    queries = statements.get("query", 0)
    others = ", ".join(f"{k} {v}" for k, v in sorted(statements.items()) if k != "query") or "none"
    print(f"statements on the Moodle database: {queries} ({queries * 1000 / n:.1f} per 1,000 rows, goal <= 30); "
          f"other commands: {others}; connections: {connections}")
    print("  by kind: " + "; ".join(f"{shape} x{count}" for shape, count in shapes))


if __name__ == "__main__":
    main()
