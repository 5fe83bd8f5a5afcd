"""A real HTTP proxy in front of a real server that injects provider faults.

Used to make the SES v2 emulator behave like SES under stress: throttle a
fraction of calls (SES's own 400 ``TooManyRequestsException`` JSON),
answer 500s, reject chosen addresses per entry (``MESSAGE_REJECTED``), or
accept connections and never answer (a hung provider).
"""
from __future__ import annotations

import json
import random
import socket
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from tests.support.servers import free_port


class FaultyProxy:
    """``http://127.0.0.1:<port>`` forwarding to ``target`` with faults.

    Attributes (change them while running): ``throttle_rate``, ``error_rate``
    (fractions of calls), ``reject`` (substring: bulk entries whose address
    contains it come back MESSAGE_REJECTED), ``hang`` (accept, never answer).
    """

    def __init__(self, target: str, *, throttle_rate: float = 0.0, error_rate: float = 0.0,
                 reject: str | None = None, seed: int = 7):
        self.target = target.rstrip("/")
        self.throttle_rate, self.error_rate, self.reject = throttle_rate, error_rate, reject
        self.hang = False
        self.random = random.Random(seed)
        self.calls = self.throttled = self.errors = 0
        self.lock = threading.Lock()
        self.port = free_port()
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), self._handler())
        self.server.daemon_threads = True
        self._hung: list[socket.socket] = []
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FaultyProxy:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        for sock in self._hung:
            sock.close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def _decide(self) -> str:
        with self.lock:
            self.calls += 1
            roll = self.random.random()
            if roll < self.throttle_rate:
                self.throttled += 1
                return "throttle"
            if roll < self.throttle_rate + self.error_rate:
                self.errors += 1
                return "error"
        return "forward"

    def _handler(self):
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                self._forward(None)

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                self._forward(self.rfile.read(length))

            def _reply(self, status: int, body: bytes, headers: dict | None = None):
                self.send_response(status)
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _forward(self, body: bytes | None):
                if proxy.hang:
                    proxy._hung.append(self.connection)
                    threading.Event().wait(3600)
                    return
                decision = proxy._decide() if body is not None else "forward"
                if decision == "throttle":
                    payload = json.dumps({"message": "Maximum sending rate exceeded."}).encode()
                    return self._reply(400, payload, {"x-amzn-ErrorType": "TooManyRequestsException",
                                                      "Content-Type": "application/json"})
                if decision == "error":
                    return self._reply(500, b'{"message":"internal failure"}',
                                       {"x-amzn-ErrorType": "InternalFailure", "Content-Type": "application/json"})
                rejected: list[int] = []
                if body and proxy.reject and self.path.endswith("/outbound-bulk-emails"):
                    body, rejected = proxy._strip_rejected(body)
                status, resp_headers, data = proxy._upstream(self.command, self.path, body, self.headers)
                if rejected and status == 200:
                    data = proxy._merge_rejected(data, rejected)
                self._reply(status, data, {"Content-Type": resp_headers.get("Content-Type", "application/json")})

        return Handler

    def _strip_rejected(self, body: bytes) -> tuple[bytes, list[int]]:
        doc = json.loads(body)
        entries = doc.get("BulkEmailEntries", [])
        keep, rejected = [], []
        for i, entry in enumerate(entries):
            if any(self.reject in a for a in entry["Destination"].get("ToAddresses", [])):
                rejected.append(i)
            else:
                keep.append(entry)
        doc["BulkEmailEntries"] = keep
        return json.dumps(doc).encode(), rejected

    @staticmethod
    def _merge_rejected(data: bytes, rejected: list[int]) -> bytes:
        doc = json.loads(data)
        results = list(doc.get("BulkEmailEntryResults", []))
        for index in rejected:
            results.insert(index, {"Status": "MESSAGE_REJECTED", "Error": "Address blacklisted."})
        doc["BulkEmailEntryResults"] = results
        return json.dumps(doc).encode()

    def _upstream(self, method: str, path: str, body: bytes | None, headers) -> tuple[int, dict, bytes]:
        if body is not None and not json.loads(body or b"{}").get("BulkEmailEntries", True):
            return 200, {}, b'{"BulkEmailEntryResults": []}'
        req = urllib.request.Request(self.target + path, data=body, method=method,
                                     headers={k: v for k, v in headers.items()
                                              if k.lower() not in ("host", "content-length")})
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return resp.status, dict(resp.headers), resp.read()
        except urllib.error.HTTPError as err:
            return err.code, dict(err.headers), err.read()
