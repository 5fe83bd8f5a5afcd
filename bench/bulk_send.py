"""Bench: one 50,000-recipient job through the real service, end to end.

Starts what it needs (a fresh PostgreSQL database on 127.0.0.1:5432 — or
SQLite with --sqlite — a private redis-server, aws-ses-v2-local, the web app
under gunicorn and two RQ workers), then prints:
- the API's time to accept the 50k job,
- the wall time from submission until every recipient is final, and emails/s,
- p50/p99 latency of 1,000 one-recipient job submissions,
- the same 50,000 sent by a bare script making the same SES calls with no
  queue or database, and the ratio (the pipeline's overhead);
- and by two bare processes, each sending half (the pipeline's concurrency: two
  workers), and the ratio against that too.

Usage: .venv/bin/python bench/bulk_send.py [--recipients 50000] [--workers 2] [--sqlite]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from tests.support.servers import ManagedProcess, RedisServer, SesLocal, free_port  # noqa: E402

BIN = os.path.join(ROOT, ".venv", "bin")
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"


def create_database(sqlite: bool) -> tuple[str, callable]:
    if sqlite:
        folder = tempfile.mkdtemp(prefix="offload-bench-")
        return f"sqlite:///{folder}/bench.db", lambda: None
    import psycopg

    name = f"offload_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')

    def drop():
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    return f"postgresql://postgres@127.0.0.1:5432/{name}", drop


def flask(env: dict, *args: str) -> str:
    done = subprocess.run([os.path.join(BIN, "flask"), "--app", "wsgi", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, check=True)
    return done.stdout


def post(url: str, token: str, body: dict) -> tuple[float, dict]:
    data = json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method="POST", headers={
        "Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    start = time.perf_counter()
    with urllib.request.urlopen(req, timeout=120) as resp:
        answer = json.load(resp)
    return time.perf_counter() - start, answer


def get(url: str, token: str) -> dict:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.load(resp)


def recipients(n: int, prefix: str = "user") -> list[dict]:
    return [{"email": f"{prefix}{i}@bench.test", "data": {"firstname": f"Name{i}", "password": f"Pw{i}!"}}
            for i in range(n)]


JOB = {"type": "csv_import", "subject": "Welcome {{ firstname }}",
       "body_text": "Hi {{ firstname }}, your password is {{ password }}",
       "body_html": "<p>Hi {{ firstname }}, your password is <b>{{ password }}</b></p>"}


def wait_final(base: str, token: str, job_id: int, timeout: float = 900) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = get(f"{base}/api/v1/jobs/{job_id}", token)
        if job["status"] in ("completed", "partial_failure", "failed", "cancelled"):
            return job
        time.sleep(0.1)
    raise TimeoutError(f"job {job_id} not final after {timeout}s")


def bare_ses(ses_url: str, n: int, prefix: str = "bare") -> float:
    """The same SendBulkEmail calls (50 a call), pre-rendered, no queue or database."""
    import boto3
    from botocore.config import Config

    client = boto3.client("sesv2", endpoint_url=ses_url, region_name="us-east-1", aws_access_key_id="x",
                          aws_secret_access_key="y", config=Config(retries={"total_max_attempts": 1}))
    people = recipients(n, prefix=prefix)
    template = {"Subject": "{{{s}}}", "Text": "{{{t}}}", "Html": "{{{h}}}"}
    start = time.perf_counter()
    for i in range(0, n, 50):
        entries = [{"Destination": {"ToAddresses": [p["email"]]}, "ReplacementEmailContent": {
            "ReplacementTemplate": {"ReplacementTemplateData": json.dumps({
                "s": f"Welcome {p['data']['firstname']}",
                "t": f"Hi {p['data']['firstname']}, your password is {p['data']['password']}",
                "h": f"<p>Hi {p['data']['firstname']}, your password is <b>{p['data']['password']}</b></p>"})}}}
            for p in people[i:i + 50]]
        client.send_bulk_email(FromEmailAddress="noreply@bench.test", BulkEmailEntries=entries,
                               DefaultContent={"Template": {"TemplateContent": template, "TemplateData": "{}"}})
    return time.perf_counter() - start


def bare_parallel(ses_url: str, n: int, processes: int) -> float:
    """``bare_ses`` in ``processes`` processes at once, each sending its share; the wall time of all."""
    import multiprocessing

    shares = [n // processes + (1 if i < n % processes else 0) for i in range(processes)]
    with multiprocessing.get_context("fork").Pool(processes) as pool:
        start = time.perf_counter()
        pool.starmap(bare_ses, [(ses_url, share, f"bare{i}-") for i, share in enumerate(shares)])
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipients", type=int, default=50_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--small", type=int, default=1000, help="one-recipient submissions to time")
    parser.add_argument("--sqlite", action="store_true")
    args = parser.parse_args()

    db_url, drop = create_database(args.sqlite)
    procs: list = []
    try:
        with RedisServer() as redis_server, SesLocal() as ses:
            env = {**os.environ, "OFFLOAD_DEV": "1", "OFFLOAD_ALLOW_PRIVATE_ENDPOINTS": "1",
                   "DATABASE_URL": db_url, "REDIS_URL": redis_server.url,
                   "OFFLOAD_MAX_RECIPIENTS": str(max(50_000, args.recipients)), "SECRET_KEY": "bench"}
            flask(env, "db", "upgrade")
            company = dict(line.split(": ", 1) for line in flask(env, "company", "create", "Bench").splitlines())
            flask(env, "company", "configure", company["id"], "provider=aws", f"aws_endpoint_url={ses.url}",
                  "aws_region=us-east-1", "aws_access_key=AKIABENCH", "aws_secret_key=bench",
                  "sender=noreply@bench.test")
            port = free_port()
            web = ManagedProcess([os.path.join(BIN, "gunicorn"), "-w", "2", "-b", f"127.0.0.1:{port}",
                                  "--timeout", "120", "wsgi:app"], port, env=env, cwd=ROOT, log_name="bench-web")
            procs.append(web.start())
            base, token = f"http://127.0.0.1:{port}", company["api_token"]
            for i in range(args.workers):
                procs.append(subprocess.Popen([os.path.join(BIN, "flask"), "--app", "wsgi", "worker",
                                               "--name", f"bench-{i}"], cwd=ROOT, env=env,
                                              stdout=open(f"/tmp/bench-worker-{i}.log", "w"), stderr=subprocess.STDOUT))
            post(f"{base}/api/v1/jobs", token, {**JOB, "recipients": recipients(1, "warm")})  # warm up

            body = {**JOB, "recipients": recipients(args.recipients)}
            t0 = time.perf_counter()
            accept_s, job = post(f"{base}/api/v1/jobs", token, body)
            final = wait_final(base, token, job["id"])
            wall = time.perf_counter() - t0
            store = [m for m in ses.store() if m["destination"]["to"][0].startswith("user")]
            dupes = len(store) - len({m["destination"]["to"][0] for m in store})

            latencies = []
            for i in range(args.small):
                seconds, _ = post(f"{base}/api/v1/jobs", token, {**JOB, "recipients": recipients(1, f"one{i}-")})
                latencies.append(seconds * 1000)
            latencies.sort()

            for p in procs[1:]:
                p.terminate()
            ses.clear()
            bare = bare_ses(ses.url, args.recipients)
            ses.clear()
            bare_two = bare_parallel(ses.url, args.recipients, args.workers)
    finally:
        for p in procs:
            p.stop() if isinstance(p, ManagedProcess) else p.kill()
        drop()

    n = args.recipients
    print(f"database: {'sqlite' if args.sqlite else 'postgresql'}; workers: {args.workers}; batch size 200")
    print(f"job {job['id']}: {final['status']}, sent {final['emails_sent']}, failed {final['emails_failed']}, "
          f"in SES store {len(store)}, duplicates {dupes}")
    print(f"accept {n} recipients (POST /api/v1/jobs): {accept_s:.2f} s")
    print(f"submission -> all {n} final: {wall:.1f} s ({n / wall:,.0f} emails/s)")
    print(f"{args.small} one-recipient submissions: p50 {statistics.median(latencies):.1f} ms, "
          f"p99 {latencies[int(len(latencies) * 0.99) - 1]:.1f} ms")
    print(f"bare script, same SES calls, no queue/db: {bare:.1f} s ({n / bare:,.0f} emails/s)")
    print(f"{args.workers} bare processes, each a share of the same calls: {bare_two:.1f} s "
          f"({n / bare_two:,.0f} emails/s)")
    print(f"pipeline overhead: {wall / bare:.2f}x the bare script, {wall / bare_two:.2f}x {args.workers} bare "
          f"processes (the pipeline's concurrency: {args.workers} workers)")


if __name__ == "__main__":
    main()
