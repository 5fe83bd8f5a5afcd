"""Start and stop the real servers the tests talk to.

Each server is a child process on a free loopback port, waited for until it
answers and terminated at teardown. Nothing here is a mock: these are the
same programs (SES v2 emulator, moto, redis-server, SMTP) the guide names.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
NODE_DIR = ROOT / "tests" / "node"
NODE_BIN = NODE_DIR / "node_modules" / ".bin"


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, timeout: float = 30.0, proc: subprocess.Popen | None = None) -> None:
    """Block until something accepts TCP connections on ``port``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process {proc.args!r} exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing answered on port {port} within {timeout}s")


def stop_group(proc: subprocess.Popen, timeout: float = 20.0) -> None:
    """Stop a child started with ``start_new_session=True`` and everything it started: TERM to its
    process group, then KILL if it has not ended within ``timeout`` seconds."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


class ManagedProcess:
    """A child process that is started, waited for and always stopped."""

    def __init__(self, args: list[str], port: int, env: dict | None = None,
                 cwd: str | Path | None = None, log_name: str = "server"):
        self.args = args
        self.port = port
        self.env = {**os.environ, **(env or {})}
        self.cwd = cwd
        self.log_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"offload-test-{log_name}-{port}.log"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 30.0) -> ManagedProcess:
        log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                     cwd=self.cwd, start_new_session=True)
        try:
            wait_for_port(self.port, timeout, self.proc)
        except Exception as exc:
            self.stop()
            tail = self.log_path.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"{self.args[0]} did not start:\n{tail}") from exc
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


class WebApp(ManagedProcess):
    """The service's web app under a real gunicorn (``wsgi:app``), one worker process by default,
    on the test's database and Redis (``env``: more variables)."""

    def __init__(self, database_url: str, redis_url: str, *, workers: int = 1, timeout_s: int = 30,
                 env: dict | None = None):
        port = free_port()
        super().__init__([str(ROOT / ".venv" / "bin" / "gunicorn"), "-w", str(workers), "--timeout",
                          str(timeout_s), "-b", f"127.0.0.1:{port}", "wsgi:app"], port,
                         env={"DATABASE_URL": database_url, "REDIS_URL": redis_url, **(env or {})}, cwd=ROOT,
                         log_name="gunicorn")


def ensure_node_modules() -> None:
    """Install the pinned npm packages of tests/node once (``npm ci``)."""
    if (NODE_BIN / "aws-ses-v2-local").exists():
        return
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError("npm is needed for the SES emulator and miniflare")
    cmd = [npm, "ci" if (NODE_DIR / "package-lock.json").exists() else "install", "--no-audit", "--no-fund"]
    subprocess.run(cmd, cwd=NODE_DIR, check=True)


class SesLocal(ManagedProcess):
    """The npm package aws-ses-v2-local: SES v2 (SendEmail, SendBulkEmail) with a readable store."""

    def __init__(self, account: dict | None = None):
        """``account``: what GetAccount answers (SendQuota etc.); unset, GetAccount is a 400."""
        ensure_node_modules()
        port = free_port()
        env = {"AWS_SES_ACCOUNT": json.dumps(account)} if account else None
        super().__init__([str(NODE_BIN / "aws-ses-v2-local"), "--host", "127.0.0.1", "--port", str(port)],
                         port, env=env, log_name="ses")

    def store(self) -> list[dict]:
        """Every email the emulator has accepted, oldest first."""
        with urllib.request.urlopen(f"{self.url}/store", timeout=30) as resp:
            return json.load(resp)["emails"]

    def clear(self) -> None:
        req = urllib.request.Request(f"{self.url}/clear-store", method="POST")
        urllib.request.urlopen(req, timeout=10).close()


class MotoServer(ManagedProcess):
    """moto in server mode: SQS, S3, STS over real HTTP."""

    def __init__(self):
        port = free_port()
        moto = Path(sys.executable).with_name("moto_server")
        super().__init__([str(moto), "-H", "127.0.0.1", "-p", str(port)], port, log_name="moto")

    def reset(self) -> None:
        req = urllib.request.Request(f"{self.url}/moto-api/reset", method="POST")
        urllib.request.urlopen(req, timeout=10).close()


class RedisServer(ManagedProcess):
    """A private redis-server that keeps nothing on disk."""

    def __init__(self, port: int | None = None):
        port = port or free_port()
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed")
        super().__init__([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                          "--appendonly", "no", "--maxmemory-policy", "noeviction"], port, log_name="redis")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"


class CertificateGateway(ManagedProcess):
    """cloud_workers/cloudflare/certificates.js alone under miniflare (workerd), with an
    in-memory R2 bucket bound as ``CERTIFICATES`` (tests/node/run_cert_gateway.mjs)."""

    def __init__(self, signing_secret: str):
        ensure_node_modules()
        node = shutil.which("node")
        if node is None:
            raise RuntimeError("node is needed for miniflare")
        port = free_port()
        super().__init__([node, str(NODE_DIR / "run_cert_gateway.mjs"), str(port)], port,
                         env={"CERTIFICATE_SIGNING_SECRET": signing_secret}, cwd=NODE_DIR,
                         log_name="cert-gateway")


# -- in-process servers --------------------------------------------------------
# The classes below run inside the test process (threads), for protocol-level
# tests: an SMTP sink, a scripted HTTP server and a port that never answers.


class ReceivedMail:
    """One message an ``SmtpSink`` accepted."""

    def __init__(self, peer: tuple, mail_from: str, rcpt_tos: list[str], data: bytes):
        import email
        from email import policy

        self.peer = peer
        self.mail_from = mail_from
        self.rcpt_tos = rcpt_tos
        self.data = data
        # parsed with LF line ends, as a mail client shows it; ``data`` stays as received
        self.message = email.message_from_bytes(data.replace(b"\r\n", b"\n"), policy=policy.default)


class SmtpSink:
    """An aiosmtpd server on a free loopback port that keeps what it accepts.

    Args:
        tls_context: server SSL context for implicit TLS (SMTPS).
        starttls_context: server SSL context offered through STARTTLS.
        require_starttls: refuse mail until the client has done STARTTLS.
        users: ``{login: password}``; when given, AUTH is required.
        auth_require_tls: aiosmtpd's rule that AUTH needs TLS (turning it off makes
            aiosmtpd emit a UserWarning per connection, an error under the suite's
            ``filterwarnings``; prefer AUTH over STARTTLS).
        refuse: ``{recipient: "550 reply"}`` answers for RCPT TO.
        drop_after_message: close each session right after a message was accepted.

    ``messages`` lists what was accepted; ``sessions`` counts EHLO'd client
    connections (a STARTTLS re-EHLO is the same connection).
    """

    def __init__(self, *, tls_context=None, starttls_context=None, require_starttls: bool = False,
                 users: dict[str, str] | None = None, auth_require_tls: bool = True,
                 refuse: dict[str, str] | None = None, drop_after_message: bool = False):
        self.port = free_port()
        self.messages: list[ReceivedMail] = []
        self.refuse = refuse or {}
        self.drop_after_message = drop_after_message
        self._peers: set[tuple] = set()
        self._tls_context = tls_context
        params: dict = {"hostname": "127.0.0.1", "port": self.port, "ready_timeout": 10}
        if tls_context is not None:
            params["ssl_context"] = tls_context
        if starttls_context is not None:
            params.update(tls_context=starttls_context, require_starttls=require_starttls)
        if users is not None:
            params.update(authenticator=self._authenticator(users), auth_required=True,
                          auth_require_tls=auth_require_tls)
        self._params = params
        self.controller = None

    @property
    def sessions(self) -> int:
        return len(self._peers)

    @staticmethod
    def _authenticator(users: dict[str, str]):
        from aiosmtpd.smtp import AuthResult, LoginPassword

        def check(server, session, envelope, mechanism, auth_data):
            ok = (isinstance(auth_data, LoginPassword)
                  and users.get(auth_data.login.decode()) == auth_data.password.decode())
            return AuthResult(success=ok, handled=False)

        return check

    # aiosmtpd handler hooks -------------------------------------------------
    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        session.host_name = hostname
        self._peers.add(session.peer)
        return responses

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address in self.refuse:
            return self.refuse[address]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        import asyncio

        self.messages.append(ReceivedMail(session.peer, envelope.mail_from, list(envelope.rcpt_tos),
                                          envelope.original_content or envelope.content))
        if self.drop_after_message:
            asyncio.get_running_loop().call_soon(server.transport.close)
        return "250 Message accepted"

    def recipients(self) -> list[str]:
        """Every accepted recipient address, one entry per delivery."""
        return [rcpt for mail in self.messages for rcpt in mail.rcpt_tos]

    def config(self) -> dict:
        """Plain SMTP settings (no TLS, no auth) pointing at this sink."""
        return {"smtp_host": "127.0.0.1", "smtp_port": self.port, "smtp_tls": "none"}

    def start(self) -> SmtpSink:
        from aiosmtpd.controller import Controller

        self.controller = Controller(self, **self._params)
        self.controller.start()
        return self

    def stop(self) -> None:
        if self.controller is not None:
            self.controller.stop()
            self.controller = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


class StubHttpServer:
    """A threaded stdlib HTTP server whose answers come from ``responder``.

    ``responder(request)`` gets a ``StubRequest`` and returns
    ``(status, headers, body)`` where body is bytes, str or a JSON-able object.
    Every request is kept in ``requests``.
    """

    def __init__(self, responder):
        self.responder = responder
        self.requests: list[StubRequest] = []
        self._server = None
        self._thread = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> StubHttpServer:
        import threading
        from http.server import ThreadingHTTPServer

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _stub_handler(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


class StubRequest:
    """What a ``StubHttpServer`` received."""

    def __init__(self, method: str, path: str, headers: dict[str, str], body: bytes):
        self.method = method
        self.path = path
        self.headers = headers
        self.body = body

    def json(self):
        return json.loads(self.body)


def _stub_handler(stub: StubHttpServer):
    from http.server import BaseHTTPRequestHandler

    class Handler(BaseHTTPRequestHandler):
        def _serve(self):
            length = int(self.headers.get("Content-Length") or 0)
            request = StubRequest(self.command, self.path, dict(self.headers.items()),
                                  self.rfile.read(length) if length else b"")
            stub.requests.append(request)
            status, headers, body = stub.responder(request)
            if not isinstance(body, (bytes, str)):
                body = json.dumps(body)
                headers = {"Content-Type": "application/json", **headers}
            data = body.encode() if isinstance(body, str) else body
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PUT = do_DELETE = _serve

        def log_message(self, format, *args):
            pass

    return Handler


class SilentServer:
    """A port that accepts TCP connections (kernel backlog) and never answers."""

    def __init__(self):
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self):
        self._sock.listen(16)
        return self

    def __exit__(self, *exc):
        self._sock.close()


class CallbackReceiver(StubHttpServer):
    """A ``StubHttpServer`` for signed worker callbacks (CONTRACT §4).

    ``verify(headers, body)`` returns to accept (200, payload kept in
    ``payloads``) or raises to refuse (401, counted in ``rejected``), as the
    service does. Pass ``providers.webhooks.verify`` bound to the secret.
    """

    def __init__(self, verify):
        super().__init__(self._respond)
        self.verify = verify
        self.payloads: list[dict] = []
        self.rejected = 0

    @property
    def callback_url(self) -> str:
        return f"{self.url}/callbacks/v1/batches"

    def _respond(self, request: StubRequest):
        try:
            self.verify(request.headers, request.body)
        except Exception:
            self.rejected += 1
            return 401, {}, {"error": "bad_signature"}
        self.payloads.append(request.json())
        return 200, {}, {"ok": True}

    def wait_for(self, count: int, timeout: float = 30.0) -> list[dict]:
        """Block until ``count`` verified payloads arrived; return them."""
        deadline = time.monotonic() + timeout
        while len(self.payloads) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(self.payloads)} of {count} callbacks within {timeout}s")
            time.sleep(0.05)
        return list(self.payloads)


# -- the Cloudflare worker under miniflare ---------------------------------------

class Miniflare(ManagedProcess):
    """cloud_workers/cloudflare/worker.js under miniflare (tests/node/run_miniflare.mjs).

    Configured from the worker's wrangler.toml: its queue consumer (with the
    dead-letter queue), producer, send_email and R2 bindings and vars, plus
    ``secrets`` and ``overrides`` (vars) from the test. ``max_batch_timeout``
    is shortened so messages are consumed at once. A harness worker in the
    same instance enqueues (``enqueue``) and collects dead letters
    (``dead_letters``); other paths reach the worker's fetch handler.

    Sent mail: miniflare's send_email binding logs each message (From, To,
    Subject and the paths of the text/HTML files it writes under
    ``email_dir``); ``sent_emails`` reads them back. Read before ``stop``:
    miniflare deletes the files when it shuts down.
    """

    RAW = r"send_email binding called with the following message:\nEmail: (?P<eml>.*)\n"
    SENT = (r"send_email binding called with MessageBuilder:\n"
            r"From: (?P<sender>.*)\nTo: (?P<to>.*)\nSubject: (?P<subject>.*)\n\n"
            r"(?:Text: (?P<text>.*)\n)?(?:HTML: (?P<html>.*)\n)?")
    ANSI = r"\x1b\[[0-9;]*m"

    def __init__(self, *, secrets: dict[str, str], overrides: dict[str, str] | None = None,
                 allowed_destinations: list[str] | None = None, max_retries: int | None = None,
                 worker_dir: Path = ROOT / "cloud_workers" / "cloudflare"):
        import tempfile
        import tomllib

        ensure_node_modules()
        node = shutil.which("node")
        if node is None:
            raise RuntimeError("node is needed for miniflare")
        wrangler = tomllib.loads((worker_dir / "wrangler.toml").read_text())
        self.email_dir = Path(tempfile.mkdtemp(prefix="offload-miniflare-"))
        port = free_port()
        config = self._config(wrangler, port, worker_dir, secrets, overrides or {},
                              allowed_destinations, max_retries)
        super().__init__([node, str(NODE_DIR / "run_miniflare.mjs")], port,
                         env={"MINIFLARE_CONFIG": json.dumps(config)}, cwd=NODE_DIR, log_name="miniflare")

    def _config(self, wrangler: dict, port: int, worker_dir: Path, secrets: dict, overrides: dict,
                allowed_destinations: list[str] | None, max_retries: int | None) -> dict:
        consumer = wrangler["queues"]["consumers"][0]
        email = [dict(binding) for binding in wrangler.get("send_email", [])]
        if allowed_destinations is not None:
            for binding in email:
                binding["allowed_destination_addresses"] = allowed_destinations
        return {
            "port": port, "workerDir": str(worker_dir), "main": wrangler["main"],
            "compatibilityDate": wrangler["compatibility_date"], "emailDir": str(self.email_dir),
            "bindings": {**wrangler.get("vars", {}), **overrides, **secrets},
            "queue": {
                "name": consumer["queue"],
                "producerBinding": wrangler["queues"]["producers"][0]["binding"],
                "maxBatchSize": consumer.get("max_batch_size", 10),
                "maxBatchTimeout": 0.05,
                "maxRetries": consumer.get("max_retries", 3) if max_retries is None else max_retries,
                "deadLetterQueue": consumer["dead_letter_queue"],
            },
            "email": email,
            "r2Buckets": [bucket["binding"] for bucket in wrangler.get("r2_buckets", [])],
        }

    def enqueue(self, message: dict) -> None:
        """Put ``message`` on the worker's queue (JSON content type, as the REST API does)."""
        req = urllib.request.Request(f"{self.url}/__test/enqueue", data=json.dumps(message).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
        urllib.request.urlopen(req, timeout=10).close()

    def dead_letters(self) -> list[dict]:
        """Messages that reached the dead-letter queue: ``{id, attempts, body}``."""
        with urllib.request.urlopen(f"{self.url}/__test/dead-letters", timeout=10) as resp:
            return json.load(resp)

    def sent_emails(self) -> list[dict]:
        """Every email the send_email binding accepted: from, to, subject, text, html
        (and, for raw MIME messages, ``headers`` and ``attachments``), in log order."""
        import re

        log = re.sub(self.ANSI, "", self.log_path.read_text(errors="replace"))
        emails = [self._parse_eml(Path(match["eml"]).read_bytes()) for match in re.finditer(self.RAW, log)]
        for match in re.finditer(self.SENT, log):
            emails.append({
                "from": match["sender"], "to": match["to"], "subject": match["subject"],
                # bytes, not read_text(): keep CR/LF exactly as sent
                "text": Path(match["text"]).read_bytes().decode() if match["text"] else None,
                "html": Path(match["html"]).read_bytes().decode() if match["html"] else None,
            })
        return emails

    @staticmethod
    def _parse_eml(raw: bytes) -> dict:
        import email
        from email import policy

        message = email.message_from_bytes(raw, policy=policy.default)
        text = message.get_body(("plain",))
        html = message.get_body(("html",))
        return {
            "raw": raw,
            "from": str(message["From"]), "to": str(message["To"]), "subject": str(message["Subject"]),
            "text": text.get_content() if text is not None else None,
            "html": html.get_content() if html is not None else None,
            "headers": {name: str(value) for name, value in message.items()},
            "attachments": [(part.get_filename(), part.get_content_type(), part.get_content())
                            for part in message.iter_attachments()],
        }

    def trigger_email(self, sender: str, to: str, raw: bytes) -> int:
        """Deliver ``raw`` to the worker's email() handler, as Email Routing does; the HTTP status."""
        from urllib.parse import urlencode

        req = urllib.request.Request(f"{self.url}/cdn-cgi/handler/email?{urlencode({'from': sender, 'to': to})}",
                                     data=raw, method="POST", headers={"MF-Route-Override": "offload"})
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return resp.status
        except urllib.error.HTTPError as exc:
            return exc.code

    def stop(self, sig: int = signal.SIGTERM) -> None:
        super().stop(sig)
        shutil.rmtree(self.email_dir, ignore_errors=True)
