"""Bench: a million recipients over a hundred companies, all at once, and the pages while they send.

Starts the real stack: a fresh PostgreSQL database on 127.0.0.1:5432, a private redis-server,
aws-ses-v2-local, the web app under gunicorn (2 processes), SMTP submission (one process) and
``--workers`` RQ workers (2). Then, for ``--scale`` recipients in all (1,000,000 by default):

- 5 companies each post one campaign of ``scale / 10`` recipients (a re-engagement mail, bulk),
  each at its ``max_send_rate`` (``--rate``, 100/s): the rate limits set the ideal wall time,
  ``scale / 10 / rate``;
- 95 companies send the other half as transactional mail throughout, paced over that ideal:
  API jobs of 20 recipients (70 %), LMS events (``user_created``, 20 %) and SMTP messages of 10
  recipients (10 %), from ``--clients`` client processes;
- a page sampler fetches every dashboard page (as an admin and as a campaign's manager), the API's
  job object and ``/metrics`` in turn all along, and 20 times each once everything is final.

Prints: accept time per 100k (the campaigns' POSTs), planning time (a campaign's POST until all
its batches exist), the end-to-end wall time and its ratio to the ideal, the transactional p99
(recipient sent minus job created, for jobs created while the campaigns ran) and the events'
202 p99, the peak RSS of the web, SMTP and worker processes, Redis' peak memory, PostgreSQL's
bytes per recipient (table and indexes), per email the CPU of each component and its round trips
(PostgreSQL transactions, Redis commands), and every page's p95 during the run and after it.

Usage: .venv/bin/python bench/scale.py [--scale 1000000] [--rate 100] [--workers 2] [--clients 6] [--progress-s 30]

A line of progress every 30 s (recipients final, jobs open, the queues, Redis, the load); the SES
emulator's store is emptied then, so a million messages do not pile up in its memory.
"""
from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import random
import re
import smtplib
import statistics
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import psutil  # noqa: E402
import requests  # noqa: E402

from bench.bulk_send import BIN, create_database, flask  # noqa: E402
from bench.fairness import ACCOUNT  # noqa: E402
from bench.smtp_ingress import SENDER, moodle_message  # noqa: E402
from tests.support.servers import ManagedProcess, RedisServer, SesLocal, free_port, wait_for_port  # noqa: E402

CAMPAIGNS, TRANSACTIONAL = 5, 95
API_SIZE, SMTP_RCPT = 20, 10
FINAL = ("sent", "failed", "bounced", "suppressed", "cancelled")
CAMPAIGN = {"type": "reengagement", "subject": "We miss you, {{ firstname }}",
            "body_text": "Hi {{ firstname }}, come back", "body_html": "<p>Hi {{ firstname }}, come back</p>"}
NOTE = {"type": "notification", "subject": "Course update", "body_text": "Hi {{ firstname }}, a course changed"}
WELCOME = {"type": "csv_import", "subject": "Welcome {{ firstname }}",
           "body_text": "Hi {{ firstname }}, your password is {{ password }}"}
PASSWORD = "correct horse battery staple"


# -- the stack ------------------------------------------------------------------------------------------

def setup(env: dict, ses_url: str, rate: int) -> tuple[list[dict], list[dict]]:
    """100 companies (5 campaigners, 95 transactional), a manager for the first, an admin; in-process."""
    os.environ.update(env)
    from core import companies
    from core.db import db
    from service import create_app

    app = create_app({"database_url": env["DATABASE_URL"], "redis_url": env["REDIS_URL"]})
    made = []
    with app.app_context():
        for i in range(CAMPAIGNS + TRANSACTIONAL):
            campaign = i < CAMPAIGNS
            company, token, _secret = companies.create_company(f"{'Campaign' if campaign else 'Tx'} {i:03d}")
            companies.configure(company, {
                "provider": "ses", "aws_endpoint_url": ses_url, "aws_region": "us-east-1",
                "aws_access_key": "AKIABENCH", "aws_secret_key": "bench", "sender": SENDER,
                "max_send_rate": str(rate if campaign else 10 * rate)})
            made.append({"id": company.id, "token": token, "campaign": campaign})
        db.session.commit()
        companies.create_user("admin@bench.test", PASSWORD, "admin", None)
        companies.create_user("manager@bench.test", PASSWORD, "manager", made[0]["id"])
        db.session.commit()
        db.session.remove()
        db.engine.dispose()
    return made[:CAMPAIGNS], made[CAMPAIGNS:]


def tree(pid: int) -> list[psutil.Process]:
    try:
        proc = psutil.Process(pid)
        return [proc, *proc.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def peak_rss_mb(pid: int) -> float:
    """The largest peak RSS (VmHWM) of a process and its children."""
    peak = 0
    for proc in tree(pid):
        try:
            with open(f"/proc/{proc.pid}/status") as f:
                peak = max(peak, next(int(line.split()[1]) for line in f if line.startswith("VmHWM")))
        except (OSError, StopIteration):
            pass
    return peak / 1024


def cpu_s(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        for proc in tree(pid):
            try:
                t = proc.cpu_times()
                total += t.user + t.system + t.children_user + t.children_system
            except psutil.NoSuchProcess:
                pass
    return total


# -- load ----------------------------------------------------------------------------------------------

def people(n: int, prefix: str, start: int = 0) -> list[dict]:
    return [{"email": f"{prefix}{i}@bench.test", "data": {"firstname": f"N{i}", "password": f"Pw{i}!"}}
            for i in range(start, start + n)]


def tx_plan(scale: int) -> list[tuple[str, int]]:
    """The transactional units in order: (kind, recipients) over the 95 companies' half."""
    half = scale - CAMPAIGNS * (scale // 10)
    api, events = int(half * 0.7) // API_SIZE, int(half * 0.2)
    smtp = (half - api * API_SIZE - events) // SMTP_RCPT
    units = [("api", API_SIZE)] * api + [("event", 1)] * events + [("smtp", SMTP_RCPT)] * smtp
    random.Random(24).shuffle(units)  # the kinds mixed over the run
    return units


def tx_client(base: str, smtp_port: int, companies: list[dict], units: list[tuple[int, str]], start_at: float,
              span_s: float, out) -> None:
    """One client process: its share of the units, paced evenly over ``span_s``."""
    session = requests.Session()
    latencies: dict[str, list[float]] = {"api": [], "event": [], "smtp": []}
    errors = 0
    smtp_conns: dict[int, smtplib.SMTP] = {}
    step = span_s / max(1, len(units))
    for k, (n, kind) in enumerate(units):
        company = companies[n % len(companies)]
        due = start_at + k * step
        wait = due - time.time()
        if wait > 0:
            time.sleep(wait)
        t0 = time.perf_counter()
        try:
            if kind == "api":
                resp = session.post(f"{base}/api/v1/jobs", json={**NOTE, "recipients": people(API_SIZE, f"a{n}-")},
                                    headers={"Authorization": f"Bearer {company['token']}"}, timeout=60)
                ok = resp.status_code == 202
            elif kind == "event":
                resp = session.post(f"{base}/api/v1/events", json={
                    "event": "user_created", "email": f"e{n}@bench.test",
                    "data": {"firstname": f"Ann{n}", "password": f"S3cret-{n}!"},
                    "occurred_at": "2026-12-07T10:30:00Z"},
                    headers={"Authorization": f"Bearer {company['token']}"}, timeout=60)
                ok = resp.status_code == 202
            else:
                conn = smtp_conns.get(company["id"])
                if conn is None:
                    conn = smtp_conns[company["id"]] = smtplib.SMTP("127.0.0.1", smtp_port, timeout=60)
                    conn.login(str(company["id"]), company["token"])
                conn.sendmail(SENDER, [f"s{n}-{r}@example.com" for r in range(SMTP_RCPT)], moodle_message(n, "s"))
                ok = True
        except (OSError, requests.RequestException, smtplib.SMTPException):
            smtp_conns.pop(company["id"], None)
            ok = False
        latencies[kind].append(time.perf_counter() - t0)
        errors += not ok
    for conn in smtp_conns.values():
        try:
            conn.quit()
        except (OSError, smtplib.SMTPException):
            pass
    out.put((latencies, errors))


class Pages(threading.Thread):
    """Fetches every page in turn (admin and manager), recording each one's latency."""

    def __init__(self, base: str, token: str, job_id: int):
        super().__init__(daemon=True)
        self.base, self.token, self.job_id = base, token, job_id
        self.during: dict[str, list[float]] = {}
        self.stop_at: float | None = None
        self.sessions = {who: self.login(f"{who}@bench.test") for who in ("admin", "manager")}

    def login(self, email: str) -> requests.Session:
        session = requests.Session()
        page = session.get(f"{self.base}/login", timeout=30).text
        token = re.search(r'name="csrf_token"[^>]*value="([^"]+)"', page).group(1)
        session.post(f"{self.base}/login", data={"email": email, "password": PASSWORD, "csrf_token": token},
                     timeout=30)
        return session

    def urls(self) -> list[tuple[str, str]]:
        j = f"/admin/jobs/{self.job_id}"
        pages = ["/admin/", "/admin/jobs/", "/admin/jobs/data.json", f"{j}/", f"{j}/data.json", f"{j}/chart.json",
                 f"{j}/?rstatus=failed", f"{j}/?rstatus=sent&after=5000", f"{j}/?q=c0-12345",
                 "/admin/audit/", "/admin/suppressions/"]
        return [(who, p) for who in ("manager", "admin") for p in pages] + [("admin", "/metrics"),
                                                                              ("api", f"/api/v1/jobs/{self.job_id}"),
                                                                              ("api", "/api/v1/jobs")]

    def fetch(self, who: str, path: str) -> float:
        t0 = time.perf_counter()
        if who == "api":
            resp = requests.get(self.base + path, headers={"Authorization": f"Bearer {self.token}"}, timeout=60)
        else:
            resp = self.sessions[who].get(self.base + path, timeout=60)
        if resp.status_code != 200:
            raise RuntimeError(f"{who} {path}: {resp.status_code}")
        return time.perf_counter() - t0

    def run(self) -> None:
        urls = self.urls()
        k = 0
        while self.stop_at is None:
            who, path = urls[k % len(urls)]
            self.during.setdefault(f"{who} {path}", []).append(self.fetch(who, path))
            k += 1
            time.sleep(0.25)

    def after(self, rounds: int = 20) -> dict[str, list[float]]:
        found: dict[str, list[float]] = {}
        for _ in range(rounds):
            for who, path in self.urls():
                found.setdefault(f"{who} {path}", []).append(self.fetch(who, path))
        return found


def p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))] if ordered else float("nan")


# -- the run -----------------------------------------------------------------------------------------

def wait_planned(db_url: str, job_id: int, batches: int, since: float, out: dict) -> None:
    import psycopg

    with psycopg.connect(db_url, autocommit=True) as conn:
        while conn.execute("SELECT count(*) FROM batches WHERE job_id = %s", (job_id,)).fetchone()[0] < batches:
            time.sleep(0.1)
    out[job_id] = time.perf_counter() - since


class Progress(threading.Thread):
    """Every ``every`` seconds, one line a long run can be watched by: recipients final, jobs open, the RQ
    queues, Redis' memory, the load; and the SES emulator's store emptied (the bench never reads it, and at
    a million messages it would hold them all in its memory)."""

    def __init__(self, db_url: str, redis_url: str, ses, expected: int, every: float = 30.0):
        super().__init__(daemon=True)
        self.db_url, self.redis_url, self.ses, self.expected, self.every = db_url, redis_url, ses, expected, every
        self.stop = threading.Event()
        self.t0 = time.perf_counter()

    def run(self) -> None:
        import psycopg
        import redis

        r = redis.Redis.from_url(self.redis_url)
        with psycopg.connect(self.db_url, autocommit=True) as conn:
            while not self.stop.wait(self.every):
                try:
                    self.ses.clear()
                    total, final, open_jobs, jobs = conn.execute(
                        "SELECT coalesce(sum(email_count), 0), coalesce(sum(emails_sent + emails_failed + "
                        "emails_bounced + emails_suppressed), 0), count(*) FILTER (WHERE status NOT IN ('completed', "
                        "'partial_failure', 'failed', 'cancelled')), count(*) FROM jobs").fetchone()
                    waiting = conn.execute("SELECT (SELECT count(*) FROM waiting_events), (SELECT count(*) FROM "
                                           "smtp_messages WHERE status = 'waiting')").fetchone()
                    queued = {name.split("-")[-1]: r.llen(f"rq:queue:offload-{name}")
                              for name in ("high", "default", "send", "low")}
                    print(f"[{time.perf_counter() - self.t0:6.0f} s] final {final:,}/{self.expected:,} "
                          f"(accepted {total:,}); jobs {jobs:,}, {open_jobs:,} open; waiting events {waiting[0]:,}, "
                          f"smtp {waiting[1]:,}; queued {queued}; redis {r.info('memory')['used_memory'] / 2**20:.0f} "
                          f"MB; load {os.getloadavg()[0]:.1f}", flush=True)
                except Exception as exc:  # noqa: BLE001 (a progress line is never worth the run)
                    print(f"progress: {type(exc).__name__}: {exc}", flush=True)


def wait_final(conn, expected: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        total, final = conn.execute(
            "SELECT coalesce(sum(email_count), 0), coalesce(sum(emails_sent + emails_failed + emails_bounced "
            "+ emails_suppressed), 0) FROM jobs").fetchone()
        done = conn.execute("SELECT count(*) FROM jobs WHERE status NOT IN "
                            "('completed', 'partial_failure', 'failed', 'cancelled')").fetchone()[0]
        if total >= expected and done == 0:
            return
        time.sleep(1)
    raise TimeoutError(f"not every recipient final after {timeout:.0f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=int, default=1_000_000, help="recipients in all")
    parser.add_argument("--rate", type=int, default=100, help="each campaign company's max_send_rate (/s)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--clients", type=int, default=6, help="transactional client processes")
    parser.add_argument("--progress-s", type=float, default=30.0, help="seconds between progress lines")
    args = parser.parse_args()
    size = args.scale // 10
    ideal = size / args.rate

    db_url, drop = create_database(False)
    procs: list = []
    try:
        account = {**ACCOUNT, "SendQuota": {"Max24HourSend": 100_000_000, "MaxSendRate": 100_000,
                                            "SentLast24Hours": 0}}  # GetAccount answers: no limit of its own
        with RedisServer() as redis_server, SesLocal(account) as ses:
            smtp_port = free_port()
            env = {**os.environ, "OFFLOAD_DEV": "1", "OFFLOAD_ALLOW_PRIVATE_ENDPOINTS": "1", "DATABASE_URL": db_url,
                   "REDIS_URL": redis_server.url, "SECRET_KEY": "bench",
                   "OFFLOAD_MAX_RECIPIENTS": str(max(size, 50_000)),
                   "OFFLOAD_SMTP_LISTEN": f"127.0.0.1:{smtp_port}", "OFFLOAD_SMTP_MAX_CONNECTIONS": "1000",
                   "OFFLOAD_MAX_BUFFERED_EVENTS": "200000", "PYTHONUNBUFFERED": "1"}
            flask(env, "db", "upgrade")
            campaigners, transactional = setup(env, ses.url, args.rate)
            port = free_port()
            web = ManagedProcess([os.path.join(BIN, "gunicorn"), "-w", "2", "--threads", "4", "-b",
                                  f"127.0.0.1:{port}", "--timeout", "300", "--keep-alive", "30", "wsgi:app"], port,
                                 env=env, cwd=ROOT, log_name="scale-web")
            procs.append(web.start())
            smtp = ManagedProcess([os.path.join(BIN, "flask"), "--app", "wsgi", "smtp"], smtp_port, env=env, cwd=ROOT,
                                  log_name="scale-smtp")
            procs.append(smtp.start())
            workers = [subprocess.Popen([os.path.join(BIN, "flask"), "--app", "wsgi", "worker", "--name",
                                         f"scale-{i}"], cwd=ROOT, env=env, stderr=subprocess.STDOUT,
                                        stdout=open(f"/tmp/scale-worker-{i}.log", "w")) for i in range(args.workers)]
            procs += workers
            wait_for_port(smtp_port)
            base = f"http://127.0.0.1:{port}"
            for company in transactional:
                requests.put(f"{base}/api/v1/templates/welcome", json=WELCOME, timeout=30,
                             headers={"Authorization": f"Bearer {company['token']}"}).raise_for_status()
            progress = Progress(db_url, redis_server.url, ses, args.scale, args.progress_s)
            progress.start()
            try:
                run(args, env, db_url, base, smtp_port, campaigners, transactional, size, ideal, redis_server,
                    web, smtp, workers)
            finally:
                progress.stop.set()
    finally:
        for proc in procs:
            proc.stop() if isinstance(proc, ManagedProcess) else proc.kill()
        drop()


def run(args, env, db_url, base, smtp_port, campaigners, transactional, size, ideal, redis_server, web, smtp,
        workers) -> None:
    import psycopg
    import redis

    conn = psycopg.connect(db_url, autocommit=True)
    r = redis.Redis.from_url(redis_server.url)
    xact0 = conn.execute("SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = "
                         "current_database()").fetchone()[0]
    cmds0 = r.info("stats")["total_commands_processed"]
    cpu0 = {"web": cpu_s([web.proc.pid]), "smtp": cpu_s([smtp.proc.pid]), "workers": cpu_s([w.pid for w in workers])}
    redis_cpu0 = sum(r.info("cpu")[k] for k in ("used_cpu_user", "used_cpu_sys"))

    units = tx_plan(args.scale)
    share = [[(n, kind) for n, (kind, _) in enumerate(units) if n % args.clients == c] for c in range(args.clients)]
    tx_total = sum(n for _, n in units)
    queue = multiprocessing.Queue()
    start_at = time.time() + 2
    clients = [multiprocessing.Process(target=tx_client, args=(base, smtp_port, transactional, share[c], start_at,
                                                               ideal * 0.9, queue)) for c in range(args.clients)]
    for c in clients:
        c.start()
    t0 = time.perf_counter()
    accepts, planned, planners, campaign_ids = [], {}, [], []
    for k, company in enumerate(campaigners):
        body = {**CAMPAIGN, "recipients": people(size, f"c{k}-")}
        sent_at = time.perf_counter()
        resp = requests.post(f"{base}/api/v1/jobs", json=body, timeout=600,
                             headers={"Authorization": f"Bearer {company['token']}"})
        resp.raise_for_status()
        accepts.append(time.perf_counter() - sent_at)
        job_id = resp.json()["id"]
        campaign_ids.append(job_id)
        planners.append(threading.Thread(target=wait_planned, args=(db_url, job_id, math.ceil(size / 200), sent_at,
                                                                    planned)))
        planners[-1].start()
    pages = Pages(base, campaigners[0]["token"], campaign_ids[0])
    pages.start()
    results = [queue.get() for _ in clients]
    for c in clients:
        c.join()
    wait_final(conn, args.scale, timeout=ideal * 10 + 1800)
    wall = time.perf_counter() - t0
    pages.stop_at = time.perf_counter()
    pages.join(timeout=120)
    for t in planners:
        t.join()
    after = pages.after()

    cpu = {"web": cpu_s([web.proc.pid]) - cpu0["web"], "smtp": cpu_s([smtp.proc.pid]) - cpu0["smtp"],
           "workers": cpu_s([w.pid for w in workers]) - cpu0["workers"]}
    backends = [row[0] for row in conn.execute("SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                                               "AND pid <> pg_backend_pid()").fetchall()]
    cpu["postgresql (open backends)"] = cpu_s(backends)
    cpu["redis"] = sum(r.info("cpu")[k] for k in ("used_cpu_user", "used_cpu_sys")) - redis_cpu0
    xacts = conn.execute("SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = "
                         "current_database()").fetchone()[0] - xact0
    cmds = r.info("stats")["total_commands_processed"] - cmds0
    report(args, conn, r, size, ideal, accepts, planned, wall, results, pages.during, after, cpu, xacts, cmds,
           tx_total, campaign_ids, web, smtp, workers)
    conn.close()


def report(args, conn, r, size, ideal, accepts, planned, wall, results, during, after, cpu, xacts, cmds, tx_total,
           campaign_ids, web, smtp, workers) -> None:
    total, sent, failed, jobs = conn.execute(
        "SELECT count(*), count(*) FILTER (WHERE status = 'sent'), count(*) FILTER (WHERE status <> 'sent'), "
        "count(DISTINCT job_id) FROM recipients").fetchone()
    window = conn.execute("SELECT min(created_at), max(sent_at) FROM recipients r JOIN jobs j ON j.id = r.job_id "
                          "WHERE j.id = ANY(%s)", (campaign_ids,)).fetchone()
    tx_p50, tx_p99, tx_n = conn.execute(
        "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM r.sent_at - j.created_at)), "
        "percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM r.sent_at - j.created_at)), count(*) "
        "FROM recipients r JOIN jobs j ON j.id = r.job_id WHERE j.priority = 'transactional' AND r.sent_at IS NOT "
        "NULL AND j.created_at BETWEEN %s AND %s", window).fetchone()
    sizes = conn.execute(
        "SELECT pg_table_size('recipients'), pg_indexes_size('recipients'), pg_total_relation_size('batches'), "
        "pg_total_relation_size('jobs'), pg_total_relation_size('job_seconds'), "
        "pg_total_relation_size('company_days'), (SELECT avg(pg_column_size(data)) FROM recipients)").fetchone()
    table, indexes, batches, jobs_b, seconds_b, days_b, data_b = sizes
    mem = r.info("memory")
    latencies = {k: [x for res, _ in results for x in res[k]] for k in ("api", "event", "smtp")}
    errors = sum(e for _, e in results)

    print(f"scale {args.scale:,} recipients: {CAMPAIGNS} campaigns of {size:,} at {args.rate}/s each, "
          f"{tx_total:,} transactional over {TRANSACTIONAL} companies; {args.workers} workers, PostgreSQL")
    print(f"recipients {total:,} ({sent:,} sent, {failed:,} not), jobs {jobs:,}; client errors {errors}")
    print(f"accept per 100k (campaign POSTs): {statistics.mean(accepts) * 100_000 / size:.2f} s "
          f"(each: {', '.join(f'{a:.1f}' for a in accepts)} s)")
    plans = [planned[j] for j in campaign_ids if j in planned]
    print(f"planning (POST to all batches): mean {statistics.mean(plans):.1f} s, max {max(plans):.1f} s")
    print(f"end to end: {wall:.1f} s against the rate limits' ideal {ideal:.1f} s: {wall / ideal:.2f}x")
    print(f"transactional while the campaigns ran (sent - job created): p50 {tx_p50:.2f} s, p99 {tx_p99:.2f} s "
          f"over {tx_n:,} recipients")
    for kind in ("api", "event", "smtp"):
        if latencies[kind]:
            print(f"  {kind:5} accept: p50 {p(latencies[kind], .5) * 1000:.0f} ms, p99 "
                  f"{p(latencies[kind], .99) * 1000:.0f} ms ({len(latencies[kind]):,})")
    print(f"peak RSS: web {peak_rss_mb(web.proc.pid):.0f} MB, smtp {peak_rss_mb(smtp.proc.pid):.0f} MB, "
          f"workers {max(peak_rss_mb(w.pid) for w in workers):.0f} MB (largest process of each)")
    print(f"redis: peak {mem['used_memory_peak'] / 2**20:.1f} MB, now {mem['used_memory'] / 2**20:.1f} MB")
    print(f"postgresql per recipient: {(table + indexes) / total:.0f} B (table {table / total:.0f}, indexes "
          f"{indexes / total:.0f}; of which data {data_b or 0:.0f}, purged after retention); with batches, jobs and "
          f"counts {(table + indexes + batches + jobs_b + seconds_b + days_b) / total:.0f} B")
    emails = max(total, 1)
    print("per email: " + ", ".join(f"{k} {v * 1000 / emails:.3f} ms CPU" for k, v in cpu.items())
          + f"; {xacts / emails:.3f} PostgreSQL transactions, {cmds / emails:.2f} Redis commands")
    print(f"{'page':58} {'p95 during':>11} {'p95 after':>10} {'max after':>10}")
    for key in after:
        print(f"{key:58} {p(during.get(key, []), .95) * 1000:9.0f}ms {p(after[key], .95) * 1000:8.0f}ms "
              f"{max(after[key]) * 1000:8.0f}ms")
    worst = max(p(v, .95) for v in after.values())
    print(f"worst page p95 after: {worst * 1000:.0f} ms; summary: " + json.dumps({
        "scale": args.scale, "accept_per_100k_s": round(statistics.mean(accepts) * 100_000 / size, 2),
        "plan_s": round(statistics.mean(plans), 1), "wall_s": round(wall, 1), "ideal_s": round(ideal, 1),
        "tx_p99_s": round(tx_p99 or 0, 2), "redis_peak_mb": round(mem["used_memory_peak"] / 2**20, 1),
        "bytes_per_recipient": round((table + indexes) / total)}))


if __name__ == "__main__":
    main()
