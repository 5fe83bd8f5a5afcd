"""Bench: ``POST /api/v1/events`` at the LMS's speed, against a bare Flask ping in the same run.

Starts the real stack (a fresh PostgreSQL database on 127.0.0.1:5432, a private redis-server,
aws-ses-v2-local, the web app under gunicorn, ``--workers`` RQ workers closing the windows and
sending meanwhile) and, under the same gunicorn flags, a bare Flask app answering ``POST /ping``
with ``{}``. ``--clients`` client processes (8, as an LMS's web servers) each keep one HTTP/1.1
connection open and post their share of ``--events`` ``user_created`` events (a welcome mail
with a password, as an IOMAD import fires them) one after the other, as an observer inside a
learner's page load does. The ping app gets the same clients and the same number of requests.

Prints, for each round (ping, events, ping, events: the machine is shared, so both are measured
twice and side by side): requests per second, p50/p99/max latency, and the events' rate as a
share of the ping's; then the time from the last 202 until every event is a recipient and
every recipient final, and whether any was lost or sent twice (the SES store).

With ``--cpu``, also prints the CPU seconds each group of processes spent per 1,000 requests in each
round (``/proc/PID/stat``: the web's gunicorn, the ping's, the RQ workers, this database's PostgreSQL
backends, the rest of PostgreSQL (its WAL writer, and the backends that ended), Redis, SES-local and the
clients), and for the drain after the last round.

Usage: .venv/bin/python bench/events.py [--events 20000] [--clients 8] [--web 2] [--threads 8] [--cpu]
"""
from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.bulk_send import BIN, create_database, flask  # noqa: E402
from tests.support.servers import ManagedProcess, RedisServer, SesLocal, free_port  # noqa: E402

TEMPLATE = {"type": "csv_import", "subject": "Welcome {{ firstname }}",
            "body_text": "Hi {{ firstname }}, your password is {{ password }}",
            "body_html": "<p>Hi {{ firstname }}, your password is <b>{{ password }}</b></p>"}
#: ``--profile``: a gunicorn config that runs cProfile in each web process, on its request threads (from the
#: request's first byte of WSGI to its answer) and on the events writer's threads, timing each thread's CPU
#: (``time.thread_time``: a wait for the GIL, the database or Redis costs nothing); written at the worker's exit
PROFILE_CONF = '''
import cProfile, os, pstats, threading, time

_local = threading.local()
_all = []
_lock = threading.Lock()


def _profile():
    prof = cProfile.Profile(time.thread_time)
    with _lock:
        _all.append(prof)
    return prof


def post_worker_init(worker):
    import core.groupcommit as groupcommit
    run = groupcommit.GroupCommit._run

    def profiled(self):
        prof = _profile()
        prof.enable()
        try:
            run(self)
        finally:
            prof.disable()

    groupcommit.GroupCommit._run = profiled


def pre_request(worker, req):
    prof = getattr(_local, "prof", None) or _profile()
    _local.prof = prof
    prof.enable()


def post_request(worker, req, environ, resp):
    _local.prof.disable()


def worker_exit(server, worker):
    with _lock:
        found = list(_all)
    if found:
        stats = pstats.Stats(found[0])
        for prof in found[1:]:
            stats.add(prof)
        stats.dump_stats(os.path.join(os.environ["BENCH_PROFILE_DIR"], f"web-{os.getpid()}.prof"))
'''
PING_APP = '''
from flask import Flask, jsonify
app = Flask("ping")

@app.post("/ping")
def ping():
    return jsonify({}), 202
'''


def gunicorn(module: str, port: int, env: dict, args, cwd: str, name: str, conf: str | None = None) -> ManagedProcess:
    flags = ["-w", str(args.web), "--threads", str(args.threads), "-b", f"127.0.0.1:{port}", "--timeout", "120",
             "--keep-alive", "30", "--backlog", "2048", *(["-c", conf] if conf else [])]
    return ManagedProcess([os.path.join(BIN, "gunicorn"), *flags, module], port, env=env, cwd=cwd, log_name=name)


def client(port: int, path: str, token: str, numbers: range, start_at: float, out) -> None:
    """One LMS web server: one keep-alive connection, one request after the other."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    latencies, errors = [], 0
    while time.time() < start_at:
        time.sleep(0.001)
    began = time.perf_counter()
    for i in numbers:
        body = json.dumps({"event": "user_created", "email": f"learner{i}@bench.test",
                           "data": {"firstname": f"Ann{i}", "password": f"S3cret-{i}!"},
                           "occurred_at": "2026-12-07T10:30:00Z"})
        t0 = time.perf_counter()
        try:
            conn.request("POST", path, body, headers)
            resp = conn.getresponse()
            resp.read()
            ok = resp.status == 202
        except (OSError, http.client.HTTPException):
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            ok = False
        latencies.append(time.perf_counter() - t0)
        errors += not ok
    out.put((began, time.perf_counter(), latencies, errors, time.process_time()))


def round_of(port: int, path: str, token: str, first: int, count: int, clients: int, cpu=None) -> dict:
    """``count`` requests from ``clients`` processes at once; rate and latency (``cpu``: a function
    that snapshots the CPU of the processes, called before and after)."""
    before = cpu() if cpu else None
    out = multiprocessing.Queue()
    share = -(-count // clients)
    start_at = time.time() + 0.5
    procs = [multiprocessing.Process(target=client, args=(port, path, token,
                                                          range(first + c * share, first + min(count, (c + 1) * share)),
                                                          start_at, out)) for c in range(clients)]
    for p in procs:
        p.start()
    results = [out.get() for _ in procs]
    for p in procs:
        p.join()
    began = min(r[0] for r in results)
    ended = max(r[1] for r in results)
    lat = sorted(x * 1000 for r in results for x in r[2])
    spent = None
    if cpu:
        spent = cpu_delta(before, cpu())
        spent["clients"] = sum(r[4] for r in results)
    return {"n": len(lat), "rate": len(lat) / (ended - began), "p50": statistics.median(lat),
            "p99": lat[int(len(lat) * 0.99) - 1], "max": lat[-1], "errors": sum(r[3] for r in results),
            "cpu": spent}


def wait_all_final(db_url: str, company_id: int, expected: int, timeout: float) -> tuple[float, int, int]:
    """Seconds until ``expected`` recipients exist and all are final; (seconds, recipients, final)."""
    import psycopg

    started = time.perf_counter()
    deadline = started + timeout
    total = final = 0
    with psycopg.connect(db_url, autocommit=True) as conn:
        while time.perf_counter() < deadline:
            total, final = conn.execute(
                "SELECT count(*), count(*) FILTER (WHERE status IN ('sent','failed','bounced','suppressed',"
                "'cancelled')) FROM recipients WHERE company_id = %s", (company_id,)).fetchone()
            if total >= expected and final == total:
                break
            time.sleep(0.5)
    return time.perf_counter() - started, total, final


CLK_TCK = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> tuple[int, float] | None:
    """(parent pid, CPU seconds of the process and its reaped children)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields_ = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return int(fields_[1]), sum(int(x) for x in fields_[11:15]) / CLK_TCK


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def cpu_snapshot(roots: dict[str, list[int]], database: str) -> dict[str, float]:
    """CPU seconds so far of each group: a root's own and its descendants' (``roots``), PostgreSQL's."""
    stats = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            found = _stat(int(name))
            if found is not None:
                stats[int(name)] = found
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in stats.items():
        children.setdefault(ppid, []).append(pid)
    totals = {}
    for group, pids in roots.items():
        seen, todo = set(), list(pids)
        while todo:
            pid = todo.pop()
            if pid in seen or pid not in stats:
                continue
            seen.add(pid)
            todo += children.get(pid, [])
        totals[group] = sum(stats[pid][1] for pid in seen)
    ours = other = 0.0
    for pid, (_, cpu) in stats.items():
        line = _cmdline(pid)
        if line.startswith("postgres: ") and f" {database} " in line:
            ours += cpu
        elif line.startswith(("postgres", "/usr/lib/postgresql")):
            other += cpu
    totals["postgres (this db)"], totals["postgres (rest)"] = ours, other
    return totals


def cpu_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {k: after[k] - before.get(k, 0.0) for k in after}


def load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000, help="events per round (two rounds)")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--web", type=int, default=2, help="gunicorn worker processes")
    parser.add_argument("--threads", type=int, default=8, help="gunicorn threads per process")
    parser.add_argument("--workers", type=int, default=2, help="RQ workers")
    parser.add_argument("--cpu", action="store_true", help="print each process group's CPU per 1,000 requests")
    parser.add_argument("--profile", metavar="DIR", help="cProfile the web processes into DIR/web-PID.prof "
                                                         "(request and events-writer threads)")
    args = parser.parse_args()

    db_url, drop = create_database(False)
    procs: list = []
    ping_dir = os.path.join("/tmp", f"offload-bench-ping-{os.getpid()}")
    os.makedirs(ping_dir, exist_ok=True)
    with open(os.path.join(ping_dir, "pingapp.py"), "w") as f:
        f.write(PING_APP)
    rounds = []
    try:
        with RedisServer() as redis_server, SesLocal() as ses:
            env = {**os.environ, "OFFLOAD_DEV": "1", "OFFLOAD_ALLOW_PRIVATE_ENDPOINTS": "1", "DATABASE_URL": db_url,
                   "REDIS_URL": redis_server.url, "SECRET_KEY": "bench", "OFFLOAD_MAX_BUFFERED_EVENTS": "1000000",
                   "OFFLOAD_MAX_RECIPIENTS": "1000000",
                   # one token posts every event: 1,000/s is 60,000 a minute (the default allows 1,200)
                   "OFFLOAD_API_RATE_PER_MIN": "100000000"}
            flask(env, "db", "upgrade")
            company = dict(line.split(": ", 1) for line in flask(env, "company", "create", "Bench").splitlines())
            flask(env, "company", "configure", company["id"], "provider=ses", f"aws_endpoint_url={ses.url}",
                  "aws_region=us-east-1", "aws_access_key=AKIABENCH", "aws_secret_key=bench",
                  "sender=noreply@bench.test")
            token = company["api_token"]
            web_port, ping_port = free_port(), free_port()
            conf = None
            if args.profile:
                os.makedirs(args.profile, exist_ok=True)
                conf = os.path.join(ping_dir, "profile_conf.py")
                with open(conf, "w") as f:
                    f.write(PROFILE_CONF)
            web_env = {**env, "BENCH_PROFILE_DIR": os.path.abspath(args.profile)} if args.profile else env
            procs.append(gunicorn("wsgi:app", web_port, web_env, args, ROOT, "bench-events-web", conf).start())
            procs.append(gunicorn("pingapp:app", ping_port, env, args, ping_dir, "bench-events-ping").start())
            conn = http.client.HTTPConnection("127.0.0.1", web_port, timeout=30)
            conn.request("PUT", "/api/v1/templates/welcome", json.dumps(TEMPLATE),
                         {"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
            resp = conn.getresponse()
            assert resp.status in (200, 201), resp.read()
            resp.read()
            for i in range(args.workers):
                procs.append(subprocess.Popen([os.path.join(BIN, "flask"), "--app", "wsgi", "worker", "--name",
                                               f"bench-events-{i}"], cwd=ROOT, env=env,
                                              stdout=open(f"/tmp/bench-events-worker-{i}.log", "w"),
                                              stderr=subprocess.STDOUT))
            roots = {"web (gunicorn)": [procs[0].proc.pid], "ping (gunicorn)": [procs[1].proc.pid],
                     "RQ workers": [p.pid for p in procs[2:]], "redis": [redis_server.proc.pid],
                     "SES-local": [ses.proc.pid]}
            database = db_url.rsplit("/", 1)[1]
            cpu = (lambda: cpu_snapshot(roots, database)) if args.cpu else None
            round_of(web_port, "/api/v1/events", token, 10_000_000, 400, args.clients)  # warm up both
            round_of(ping_port, "/ping", token, 0, 400, args.clients)
            posted = 400
            for n in range(2):
                ping = round_of(ping_port, "/ping", token, 0, args.events, args.clients, cpu)
                ping["load"] = load()
                ev = round_of(web_port, "/api/v1/events", token, n * args.events, args.events, args.clients, cpu)
                ev["load"] = load()
                posted += args.events - ev["errors"]  # an event refused (or unanswered) is not counted as posted
                rounds.append((ping, ev))
            drain_before = cpu() if cpu else None
            drain_s, total, final = wait_all_final(db_url, int(company["id"]), posted, 900)
            drained = cpu_delta(drain_before, cpu()) if cpu else None
            store = ses.store()
            to = [m["destination"]["to"][0] for m in store]
            duplicates = len(to) - len(set(to))
    finally:
        for p in procs:
            p.stop() if isinstance(p, ManagedProcess) else p.kill()
        drop()

    print(f"{args.clients} clients, gunicorn -w {args.web} --threads {args.threads}, {args.workers} RQ workers, "
          f"PostgreSQL; {args.events} requests per round")
    print(f"{'round':<8}{'':<8}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}{'errors':>8}   load")
    for n, (ping, ev) in enumerate(rounds, 1):
        for name, r in (("ping", ping), ("events", ev)):
            print(f"{n:<8}{name:<8}{r['rate']:>9,.0f}{r['p50']:>9.1f}{r['p99']:>9.1f}{r['max']:>9.1f}"
                  f"{r['errors']:>8}   {r['load']}")
        print(f"{'':<8}events at {ev['rate'] / ping['rate']:.2f}x the ping's rate, p99 {ev['p99'] / ping['p99']:.1f}x")
    print(f"after the last 202: {drain_s:.1f} s until every event was a final recipient "
          f"({total} recipients of {posted} events, {final} final); SES store {len(store)}, duplicates {duplicates}")
    if args.cpu:
        groups = list(rounds[0][0]["cpu"])
        print("CPU seconds per 1,000 requests, by process group (drain: per 1,000 events, after the last 202)")
        heads = [f"{kind} {n}" for n in range(1, len(rounds) + 1) for kind in ("ping", "events")]
        print(f"{'group':<20}" + "".join(f"{h:>10}" for h in heads) + f"{'drain':>10}")
        for g in groups:
            cells = [r["cpu"].get(g, 0.0) * 1000 / r["n"] for pair in rounds for r in pair]
            tail = drained.get(g, 0.0) * 1000 / max(posted, 1) if g != "clients" else 0.0
            print(f"{g:<20}" + "".join(f"{c:>10.3f}" for c in cells) + f"{tail:>10.3f}")
        cells = [sum(r["cpu"].values()) * 1000 / r["n"] for pair in rounds for r in pair]
        tail = sum(drained.values()) * 1000 / max(posted, 1)
        print(f"{'all':<20}" + "".join(f"{c:>10.3f}" for c in cells) + f"{tail:>10.3f}")


if __name__ == "__main__":
    main()
