"""The fault tests' parts: a restartable PostgreSQL cluster and Redis, a supervised
worker fleet, and counting what was delivered."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from sqlalchemy import select, text

from core.db import db
from core.models import JOB_FINAL, Job
from tests.support.servers import RedisServer, free_port, wait_for_port

ROOT = Path(__file__).resolve().parents[2]


FLASK = ROOT / ".venv" / "bin" / "flask"


PG_BIN = Path(os.environ.get("OFFLOAD_PG_BIN", "/usr/local/bin"))


RESULTS = ROOT / "tests" / "artifacts" / "faults.txt"


LEASE_S = 5        # the settings' floor: a dead worker's batch is taken over within ~6 s


SWEEP_S = 1


CHUNK = 50         # recipients per SES bulk call: the most a killed worker can leave in flight


FAULT_LINES: list[str] = []


class PgCluster:
    """A throw-away PostgreSQL cluster on a free port (no fsync: speed over durability)."""

    def __init__(self):
        if not (PG_BIN / "initdb").exists():
            pytest.skip(f"PostgreSQL binaries not found in {PG_BIN}")
        self.dir = Path(tempfile.mkdtemp(prefix="offload-faults-pg-"))
        self.data = self.dir / "data"
        self.log = self.dir / "postgres.log"
        self.port = free_port()
        self.as_user: list[str] = []
        if os.geteuid() == 0:  # postgres refuses to run as root
            shutil.chown(self.dir, "postgres")
            self.as_user = ["runuser", "-u", "postgres", "--"]

    def _run(self, *args: str, timeout: float = 60) -> None:
        res = subprocess.run([*self.as_user, *args], capture_output=True, text=True, timeout=timeout)
        if res.returncode != 0:
            tail = self.log.read_text(errors="replace")[-1500:] if self.log.exists() else ""
            raise RuntimeError(f"{args[0]} failed ({res.returncode}): {res.stderr}\n{tail}")

    def init(self) -> PgCluster:
        self._run(str(PG_BIN / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres",
                  "-E", "UTF8", "--no-sync")
        return self

    def start(self) -> None:
        opts = (f"-p {self.port} -h 127.0.0.1 -k {self.dir} -c fsync=off -c synchronous_commit=off "
                "-c full_page_writes=off -c max_connections=100")
        self._run(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60",
                  "-o", opts, "start")
        wait_for_port(self.port, 30)

    def stop(self, mode: str = "fast") -> None:
        self._run(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")

    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()

    def url(self, database: str = "offload") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str = "offload") -> str:
        import psycopg

        with psycopg.connect(f"postgresql://postgres@127.0.0.1:{self.port}/postgres", autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def destroy(self) -> None:
        if self.running():
            try:
                self.stop("immediate")
            except (RuntimeError, subprocess.TimeoutExpired):
                pass
        shutil.rmtree(self.dir, ignore_errors=True)


class RestartableRedis:
    """A private redis-server that can be replaced by an empty one on the same port."""

    def __init__(self):
        self.server = RedisServer().start()
        self.port = self.server.port
        self.restarts = 0

    @property
    def url(self) -> str:
        return self.server.url

    def restart_empty(self, down_s: float = 1.0) -> None:
        """Stop the server (its data is not saved anywhere) and start a new one on the same port."""
        self.server.stop()
        time.sleep(down_s)
        self.server = RedisServer(port=self.port).start()
        self.restarts += 1

    def stop(self) -> None:
        self.server.stop()
        self.server.log_path.unlink(missing_ok=True)


class WorkerFleet:
    """``size`` worker processes kept alive by a supervisor thread (Restart=always, RestartSec=0.5).

    Each worker is its own process group (the RQ scheduler is a fork of it), so
    killing a worker kills the group, as systemd's KillMode=control-group does.
    """

    def __init__(self, env: dict, size: int = 2, restart_delay: float = 0.5):
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **env}
        self.size = size
        self.restart_delay = restart_delay
        self.procs: list[subprocess.Popen | None] = [None] * size
        self.logdir = Path(tempfile.mkdtemp(prefix="offload-faults-workers-"))
        self.starts = 0
        self.exits: list[int] = []    # return codes of workers that died (not killed by us)
        self.killed: set[int] = set()
        self.kills = 0                # SIGKILLs sent (a pid is only ever chosen while alive)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._supervise, daemon=True, name="fleet-supervisor")

    def _spawn(self, slot: int) -> None:
        log = open(self.logdir / f"worker-{slot}.log", "ab")
        self.procs[slot] = subprocess.Popen([str(FLASK), "--app", "wsgi", "worker"], cwd=ROOT, env=self.env,
                                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        self.starts += 1

    def start(self) -> WorkerFleet:
        for slot in range(self.size):
            self._spawn(slot)
        self._thread.start()
        return self

    def _supervise(self) -> None:
        while not self._stop.wait(0.1):
            with self._lock:
                for slot, proc in enumerate(self.procs):
                    if proc is not None and proc.poll() is not None:
                        if proc.pid not in self.killed:
                            self.exits.append(proc.returncode)
                        self.procs[slot] = None
                        threading.Timer(self.restart_delay, self._respawn, args=(slot,)).start()

    def _respawn(self, slot: int) -> None:
        with self._lock:
            if not self._stop.is_set() and self.procs[slot] is None:
                self._spawn(slot)

    def pids(self) -> list[int]:
        """Workers alive now (one just killed may not be reaped yet: it is left out)."""
        return [p.pid for p in self.procs if p is not None and p.poll() is None and p.pid not in self.killed]

    def kill(self, pid: int, sig: int = signal.SIGKILL) -> None:
        self.killed.add(pid)
        self.kills += 1
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            pass

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        with self._lock:
            procs = [p for p in self.procs if p is not None]
        for proc in procs:
            if proc.poll() is None:
                self.kill(proc.pid, signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)

    def log_tail(self, chars: int = 3000) -> str:
        out = []
        for path in sorted(self.logdir.glob("*.log")):
            out.append(f"--- {path.name}\n{path.read_text(errors='replace')[-chars:]}")
        return "\n".join(out)

    def grep(self, needle: str) -> list[str]:
        return [line for path in sorted(self.logdir.glob("*.log"))
                for line in path.read_text(errors="replace").splitlines() if needle in line]

    def cleanup(self) -> None:
        if os.environ.get("OFFLOAD_FAULTS_KEEP_LOGS"):
            print(f"worker logs kept in {self.logdir}")
            return
        shutil.rmtree(self.logdir, ignore_errors=True)


BODY = {"type": "csv_import", "subject": "Welcome {{ firstname }}",
        "body_text": "Hi {{ firstname }}, your password is {{ password }}"}


def people(n: int, prefix: str = "user") -> list[dict]:
    return [{"email": f"{prefix}{i}@acme.test", "data": {"firstname": f"N{i}", "password": f"Pw{i}"}}
            for i in range(n)]


def submit(client, company, n: int, prefix: str = "user") -> int:
    resp = client.post("/api/v1/jobs", json={**BODY, "recipients": people(n, prefix)}, headers=company.auth)
    assert resp.status_code == 202, resp.get_data(as_text=True)
    return resp.json["id"]


def recipient_counts(job_id: int) -> Counter:
    rows = db.session.execute(text("SELECT status, count(*) FROM recipients WHERE job_id = :j GROUP BY status"),
                              {"j": job_id}).all()
    db.session.commit()
    return Counter(dict(rows))


def load_job(job_id: int):
    db.session.expire_all()
    job = db.session.execute(select(Job).where(Job.id == job_id)).scalar_one()
    db.session.commit()
    return job


def wait_final(job_id: int, timeout: float, fleet: WorkerFleet | None = None, poll: float = 0.25):
    """Wait until the job has a final status; fail with the evidence when it has not within ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            job = load_job(job_id)
            if job.status in JOB_FINAL:
                return job
        except Exception:  # noqa: BLE001 - the database may be the thing being broken
            db.session.rollback()
        time.sleep(poll)
    batches = db.session.execute(text("SELECT status, count(*) FROM batches WHERE job_id = :j GROUP BY status"),
                                 {"j": job_id}).all()
    pytest.fail(f"job {job_id} not final within {timeout}s: recipients {dict(recipient_counts(job_id))}, "
                f"batches {dict(batches)}\n{fleet.log_tail() if fleet else ''}")


def wait_progress(job_id: int, fraction: float, total: int, timeout: float = 60) -> None:
    """Block until ``fraction`` of the job's recipients were sent."""
    deadline = time.monotonic() + timeout
    while recipient_counts(job_id).get("sent", 0) < fraction * total:
        if time.monotonic() > deadline:
            pytest.fail(f"job {job_id}: not {fraction:.0%} sent within {timeout}s: {dict(recipient_counts(job_id))}")
        time.sleep(0.05)


def delivered(store: list[dict]) -> Counter:
    """How many times each address reached the provider."""
    return Counter(addr for mail in store for addr in mail["destination"]["to"])


def lost_and_duplicated(expected: set[str], got: Counter) -> tuple[int, int]:
    lost = len(expected - set(got))
    duplicated = sum(n - 1 for n in got.values() if n > 1)
    return lost, duplicated


class SmtpProcess:
    """``flask --app wsgi smtp`` on a fixed port, restarted by ``restart()`` after a kill (as systemd's
    Restart=always would); its own process group, so a kill takes its threads with it."""

    def __init__(self, env: dict):
        self.port = free_port()
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", "OFFLOAD_SMTP_LISTEN": f"127.0.0.1:{self.port}", **env}
        self.logdir = Path(tempfile.mkdtemp(prefix="offload-faults-smtp-"))
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    def command(self) -> list[str]:
        return [str(FLASK), "--app", "wsgi", "smtp"]

    def start(self) -> SmtpProcess:
        log = open(self.logdir / f"{self.command()[0].rpartition('/')[2]}-{self.starts}.log", "wb")
        self.proc = subprocess.Popen(self.command(), cwd=ROOT, env=self.env, stdout=log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        self.starts += 1
        wait_for_port(self.port, 60, self.proc)
        return self

    def kill(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def restart(self) -> None:
        self.kill()
        self.start()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()
        if not os.environ.get("OFFLOAD_FAULTS_KEEP_LOGS"):
            shutil.rmtree(self.logdir, ignore_errors=True)

    def log_tail(self, chars: int = 3000) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-chars:]}"
                         for p in sorted(self.logdir.glob("*.log")))


class WebProcess(SmtpProcess):
    """The web app under gunicorn (``workers`` processes of ``threads`` threads) on a fixed port, killed
    and restarted the same way (the master and its workers are one process group)."""

    def __init__(self, env: dict, workers: int = 2, threads: int = 4):
        super().__init__(env)
        self.workers, self.threads = workers, threads

    def command(self) -> list[str]:
        return [str(ROOT / ".venv" / "bin" / "gunicorn"), "-w", str(self.workers), "--threads", str(self.threads),
                "-b", f"127.0.0.1:{self.port}", "--timeout", "60", "wsgi:app"]
