"""Bench: SMTP submission's acceptance against a no-op SMTP sink, and messages to final.

Starts a fresh PostgreSQL database on 127.0.0.1:5432 (or SQLite with --sqlite), a private
redis-server and ``flask --app wsgi smtp`` (one process), and beside it a no-op SMTP sink
(aiosmtpd, a process of its own, storing nothing; once plain, once re-arming TCP_QUICKACK
on each read as our server does). The same clients send the same messages to each:
``--clients`` processes (4), each keep-alive sessions of ``--per-session`` messages (50, as
Moodle's ``smtpmaxbulk``) with AUTH LOGIN, one recipient each, ~2 KB as Moodle writes them.
Two client kinds: smtplib (DATA in one write) and ``LineClient``, which writes every line
with its own ``send()`` and Nagle's algorithm on, as Moodle's PHPMailer does.

Prints, per client kind and server: messages accepted per second, p50/p99 latency per
message (MAIL FROM to the 250 after DATA), and our server's rate as a share of the sink's; and
the CPU each message cost the server (every process of it), PostgreSQL and the clients.
With ``--e2e N`` (default 50,000; 0 skips) it then sends N messages to our server with the
smtplib clients while ``--workers`` RQ workers deliver them to aws-ses-v2-local, and prints
the time until every recipient is final (first message sent → all final; and from the
last 250), with how fast acceptance stayed over the burst (the first and the last tenth).

Usage: .venv/bin/python bench/smtp_ingress.py [--messages 20000] [--clients 4] [--e2e 50000] [--sqlite]
"""
from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import signal
import smtplib
import socket
import subprocess
import sys
import tempfile
import time
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from tests.support.servers import ManagedProcess, RedisServer, SesLocal, free_port, wait_for_port  # noqa: E402
from tests.support.smtp_clients import LineClient  # noqa: E402

BIN = os.path.join(ROOT, ".venv", "bin")
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
SENDER = "noreply@bench.test"


def moodle_message(n: int, tag: str) -> bytes:
    """A message the size and shape of a Moodle notification (~2 KB, quoted-printable body)."""
    to = f"{tag}{n}@example.com"
    body = "".join(f"Hi learner {n}, this is line {i} of your notification from the academy.=20\r\n"
                   for i in range(24))
    return (f"Date: Mon, 7 Dec 2026 10:00:00 +0000\r\nTo: Learner {n} <{to}>\r\n"
            f"From: \"Academy (via Moodle)\" <{SENDER}>\r\nSubject: Your account {n}\r\n"
            f"Message-ID: <{tag}.{n}.{uuid.uuid4().hex}@bench.test>\r\nX-Mailer: PHPMailer 6.9.1\r\n"
            "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
            "Content-Transfer-Encoding: quoted-printable\r\n\r\n" + body).encode()


# -- the no-op sink ------------------------------------------------------------------------

def serve_sink(port: int, quickack: bool) -> None:
    """aiosmtpd storing nothing, AUTH taking anything (this process runs until killed)."""
    from aiosmtpd.smtp import SMTP, AuthResult

    class Noop:
        async def handle_DATA(self, server, session, envelope):
            return "250 OK"

    class Sink(SMTP):
        def connection_made(self, transport):
            super().connection_made(transport)
            self._sock = transport.get_extra_info("socket") if quickack else None

        def data_received(self, data):
            if getattr(self, "_sock", None) is not None:
                self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
            super().data_received(data)

    loop = asyncio.new_event_loop()

    def factory():
        return Sink(Noop(), hostname="sink", auth_require_tls=False, loop=loop,
                    authenticator=lambda *a: AuthResult(success=True))

    server = loop.run_until_complete(loop.create_server(factory, "127.0.0.1", port, backlog=512))
    loop.add_signal_handler(signal.SIGTERM, loop.stop)
    loop.run_forever()
    server.close()


# -- the clients ---------------------------------------------------------------------------

def client_run(kind: str, port: int, user: str, password: str, count: int, per_session: int, tag: str,
               start_at: float) -> tuple[list[tuple[float, float]], float]:
    """Send ``count`` messages in sessions of ``per_session``; (latency s, when done) per message, and the
    CPU seconds this client used."""
    while time.time() < start_at:
        time.sleep(0.001)
    cpu = time.process_time()
    done: list[tuple[float, float]] = []
    n = 0
    while n < count:
        batch = min(per_session, count - n)
        if kind == "line":
            client = LineClient("127.0.0.1", port)
            client.login(user, password)
            for _ in range(batch):
                raw = moodle_message(n, tag)
                t = time.perf_counter()
                client.send(SENDER, [f"{tag}{n}@example.com"], raw)
                done.append((time.perf_counter() - t, time.time()))
                n += 1
            client.quit()
        else:
            client = smtplib.SMTP("127.0.0.1", port, timeout=60)
            client.login(user, password)
            for _ in range(batch):
                raw = moodle_message(n, tag)
                t = time.perf_counter()
                client.sendmail(SENDER, [f"{tag}{n}@example.com"], raw)
                done.append((time.perf_counter() - t, time.time()))
                n += 1
            client.quit()
    return done, time.process_time() - cpu


def with_children(pids: list[int]) -> list[int]:
    """``pids`` and their child processes (the SMTP server's, when it runs several)."""
    found = list(pids)
    for pid in pids:
        try:
            for task in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{task}/children") as f:
                    found.extend(int(child) for child in f.read().split())
        except OSError:
            continue
    return found


def cpu_of(pids: list[int]) -> float:
    """CPU seconds (user + system, every thread) the processes ``pids`` used so far; 0 for one that is gone."""
    total = 0.0
    for pid in with_children(pids):
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rpartition(")")[2].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def postgres_pids() -> list[int]:
    """Every PostgreSQL process of the machine (the bench holds the machine: they are its database's)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/comm") as f:
                    if f.read().strip() == "postgres":
                        found.append(int(entry))
            except OSError:
                continue
    return found


def drive(kind: str, port: int, user: str, password: str, total: int, clients: int, per_session: int,
          tag: str, server: list[int] | None = None) -> dict:
    """``clients`` processes sending ``total`` messages together; rate and latencies, and the CPU per
    message of the clients, of the ``server`` processes and of PostgreSQL."""
    share = [total // clients + (1 if i < total % clients else 0) for i in range(clients)]
    start_at = time.time() + 0.5
    pg = postgres_pids()
    before = cpu_of(server or []), cpu_of(pg)
    with multiprocessing.get_context("fork").Pool(clients) as pool:
        runs = pool.starmap(client_run, [(kind, port, user, password, share[i], per_session, f"{tag}c{i}-", start_at)
                                         for i in range(clients)])
    after = cpu_of(server or []), cpu_of(pg + [p for p in postgres_pids() if p not in pg])
    marks = [m for run, _ in runs for m in run]
    latencies = sorted(lat for lat, _ in marks)
    wall = max(at for _, at in marks) - start_at
    per = 1000 / len(marks)
    return {"rate": len(marks) / wall, "p50": latencies[len(latencies) // 2] * 1000,
            "p99": latencies[int(len(latencies) * 0.99) - 1] * 1000, "wall": wall, "marks": marks,
            "start": start_at, "cpu_clients": sum(cpu for _, cpu in runs) * per,
            "cpu_server": (after[0] - before[0]) * per, "cpu_db": (after[1] - before[1]) * per}


# -- the service ---------------------------------------------------------------------------

def create_database(sqlite: bool):
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
    return subprocess.run([os.path.join(BIN, "flask"), "--app", "wsgi", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, check=True).stdout


def wait_all_final(env: dict, expected: int, timeout: float = 1800) -> float:
    """Poll the database until ``expected`` recipients of SMTP jobs are final; when that was."""
    from sqlalchemy import create_engine, text

    from core.settings import normalize_database_url

    engine = create_engine(normalize_database_url(env["DATABASE_URL"]))
    deadline = time.monotonic() + timeout
    with engine.connect() as conn:
        while time.monotonic() < deadline:
            final = conn.execute(text(
                "SELECT count(*) FROM recipients r JOIN jobs j ON j.id = r.job_id WHERE j.source = 'smtp' "
                "AND r.status IN ('sent', 'failed', 'bounced', 'suppressed', 'cancelled')")).scalar()
            conn.commit()
            if final >= expected:
                return time.time()
            time.sleep(0.2)
    raise TimeoutError(f"not every recipient final after {timeout} s")


def bare_raw(ses_url: str, n: int, tag: str) -> float:
    """The same SendEmail calls with Raw content (one message each, as the service makes them for mail
    taken by SMTP), from a plain loop: no SMTP, queue or database."""
    import boto3
    from botocore.config import Config

    client = boto3.client("sesv2", endpoint_url=ses_url, region_name="us-east-1", aws_access_key_id="x",
                          aws_secret_access_key="y", config=Config(retries={"total_max_attempts": 1}))
    messages = [moodle_message(i, tag) for i in range(n)]
    start = time.perf_counter()
    for i, raw in enumerate(messages):
        client.send_email(Destination={"ToAddresses": [f"{tag}{i}@example.com"]}, Content={"Raw": {"Data": raw}})
    return time.perf_counter() - start


def show(label: str, result: dict, base: dict | None = None) -> None:
    ratio = f"  {result['rate'] / base['rate']:.0%} of the sink" if base else ""
    print(f"  {label:<34} {result['rate']:7,.0f} msg/s  p50 {result['p50']:6.2f} ms  p99 {result['p99']:6.2f} ms"
          f"{ratio}", flush=True)
    print(f"  {'':<34} CPU per message: server {result['cpu_server']:.2f} ms, PostgreSQL {result['cpu_db']:.2f} ms, "
          f"clients {result['cpu_clients']:.2f} ms", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=20_000, help="messages per acceptance run")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--per-session", type=int, default=50)
    parser.add_argument("--e2e", type=int, default=50_000, help="messages sent to final (0: skip)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--sqlite", action="store_true")
    parser.add_argument("--serve-sink", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--quickack", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_sink:
        serve_sink(args.serve_sink, args.quickack)
        return

    db_url, drop = create_database(args.sqlite)
    procs: list = []
    try:
        with RedisServer() as redis_server, SesLocal() as ses:
            port = free_port()
            env = {**os.environ, "OFFLOAD_DEV": "1", "OFFLOAD_ALLOW_PRIVATE_ENDPOINTS": "1", "DATABASE_URL": db_url,
                   "REDIS_URL": redis_server.url, "SECRET_KEY": "bench", "OFFLOAD_SMTP_LISTEN": f"127.0.0.1:{port}",
                   "OFFLOAD_SMTP_MAX_CONNECTIONS": str(args.clients * 2), "PYTHONUNBUFFERED": "1"}
            flask(env, "db", "upgrade")
            company = dict(line.split(": ", 1) for line in flask(env, "company", "create", "Bench").splitlines())
            flask(env, "company", "configure", company["id"], "provider=ses", f"aws_endpoint_url={ses.url}",
                  "aws_region=us-east-1", "aws_access_key=AKIABENCH", "aws_secret_key=bench", f"sender={SENDER}")
            user, token = company["id"], company["api_token"]
            smtp = ManagedProcess([os.path.join(BIN, "flask"), "--app", "wsgi", "smtp"], port, env=env, cwd=ROOT,
                                  log_name="bench-smtp")
            procs.append(smtp.start())
            ours_pids = [smtp.proc.pid]
            sinks, sink_pids = {}, {}
            for quickack in (False, True):
                sink_port = free_port()
                sink = ManagedProcess([sys.executable, __file__, "--serve-sink", str(sink_port),
                                       *(["--quickack"] if quickack else [])], sink_port, log_name="bench-sink")
                procs.append(sink.start())
                sinks[quickack] = sink_port
                sink_pids[sink_port] = [sink.proc.pid]
            wait_for_port(port)
            drive("smtplib", port, user, token, 200, args.clients, args.per_session, "warm")  # warm up

            n = args.messages
            print(f"database: {'sqlite' if args.sqlite else 'postgresql'}; {args.clients} client processes, "
                  f"sessions of {args.per_session}, {n:,} messages a run", flush=True)
            print("smtplib (DATA in one write):")
            sink = drive("smtplib", sinks[False], user, token, n, args.clients, args.per_session, "s",
                         sink_pids[sinks[False]])
            show("no-op sink (aiosmtpd)", sink)
            ours = drive("smtplib", port, user, token, n, args.clients, args.per_session, "a", ours_pids)
            show("SMTP submission (stored, 250)", ours, sink)
            print("line by line, Nagle on (Moodle's PHPMailer):")
            line_n = max(args.clients * args.per_session, n // 4)
            plain = drive("line", sinks[False], user, token, min(line_n, 2_000), args.clients, args.per_session, "p",
                          sink_pids[sinks[False]])
            show("no-op sink (aiosmtpd)", plain)
            quick = drive("line", sinks[True], user, token, line_n, args.clients, args.per_session, "q",
                          sink_pids[sinks[True]])
            show("no-op sink + TCP_QUICKACK", quick)
            line = drive("line", port, user, token, line_n, args.clients, args.per_session, "l", ours_pids)
            show("SMTP submission (stored, 250)", line, quick)
            print(f"  (SMTP submission / plain aiosmtpd sink: {line['rate'] / plain['rate']:.1f}x)")

            if args.e2e:
                for i in range(args.workers):
                    procs.append(subprocess.Popen([os.path.join(BIN, "flask"), "--app", "wsgi", "worker", "--name",
                                                   f"bench-{i}"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                                                  stderr=subprocess.STDOUT))
                before = wait_all_final(env, 0)  # the earlier runs' jobs are sent meanwhile
                burst = drive("smtplib", port, user, token, args.e2e, args.clients, args.per_session, "e", ours_pids)
                last_250 = max(at for _, at in burst["marks"])
                # every message our server took (the warm-up, the two acceptance runs, the burst): one recipient each
                done = wait_all_final(env, 200 + n + line_n + args.e2e, timeout=3600)
                marks = sorted(at for _, at in burst["marks"])
                tenth = max(1, len(marks) // 10)
                first = tenth / (marks[tenth - 1] - burst["start"])
                last = tenth / (marks[-1] - marks[-tenth - 1])
                print(f"{args.e2e:,} messages to final, {args.workers} workers, SES (aws-ses-v2-local):")
                show("acceptance during the burst", burst)
                print(f"  acceptance, first tenth {first:,.0f} msg/s, last tenth {last:,.0f} msg/s")
                print(f"  first message -> all final: {done - burst['start']:.1f} s; last 250 -> all final: "
                      f"{done - last_250:.1f} s (the window closes {float(env.get('OFFLOAD_BULK_WINDOW_S', 10)):g} s "
                      f"after its last message, at most six windows after its first)", flush=True)
                for p in procs:  # the workers, the SMTP server and the sinks: the bare script runs alone
                    if isinstance(p, ManagedProcess):
                        p.stop()
                    else:
                        p.terminate()
                        p.wait(timeout=30)
                procs.clear()
                ses.clear()
                bare = bare_raw(ses.url, args.e2e, "b")
                print(f"  bare script, the same {args.e2e:,} SendEmail Raw calls one by one: {bare:.1f} s "
                      f"({args.e2e / bare:,.0f} msg/s); first message -> all final is "
                      f"{(done - burst['start']) / bare:.2f}x that")
                del before
    finally:
        for p in procs:
            if isinstance(p, ManagedProcess):
                p.stop()
            else:
                p.terminate()
                p.wait(timeout=30)
        drop()


if __name__ == "__main__":
    main()
