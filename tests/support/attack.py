"""The attacker's tools for the tenant-boundary tests (tests/security): secret-looking
answers of fake internal services, an SSH-style banner server, and small helpers that
submit jobs and read back everything a tenant can see."""
from __future__ import annotations

import socket
import threading

from tests.support.app import AuthActions, csrf_from, run_worker_burst

#: what an internal admin page, or the metadata service, would give away
SECRET_BODY = "INTERNAL-ADMIN root:s3cr3t AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMIK7MDENGbPxRfiCYINTERNAL"
SECRET_MARKERS = ("INTERNAL-ADMIN", "s3cr3t", "wJalrXUtnFEMIK7MDENG")
SSH_BANNER = "SSH-2.0-OpenSSH_9.6p1 Ubuntu-3ubuntu13 internal-bastion-7"


def leaks(text) -> list[str]:
    """The secret markers present in ``text`` (any str/bytes/JSON-able value)."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    text = str(text)
    return [m for m in (*SECRET_MARKERS, "OpenSSH", "internal-bastion") if m in text]


class BannerServer:
    """A TCP server that greets every connection with an SSH banner, like sshd."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            try:
                conn.sendall((SSH_BANNER + "\r\n").encode())
                conn.settimeout(2)
                conn.recv(1024)
            except OSError:
                pass
            finally:
                conn.close()

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self.sock.close()


def submit(client, company, recipients, **extra) -> int:
    body = {"type": "csv_import", "subject": "Hello", "body_text": "Hi {{ firstname }}", **extra,
            "recipients": recipients}
    resp = client.post("/api/v1/jobs", headers=company.auth, json=body)
    assert resp.status_code == 202, resp.get_json()
    return resp.get_json()["id"]


def people(n: int) -> list[dict]:
    return [{"email": f"user{i}@acme.test", "data": {"firstname": f"Name{i}", "password": f"Pw-{i}-S3cret"}}
            for i in range(n)]


def login_as(client, make_user, email: str, role: str = "manager", company_id=None) -> None:
    make_user(email, role=role, company_id=company_id)
    assert AuthActions(client).login(email, "correct horse battery").status_code == 302


def tenant_view(client, company, job_id: int) -> str:
    """Everything the tenant can read about a job: API job and recipients, as one string."""
    job = client.get(f"/api/v1/jobs/{job_id}", headers=company.auth).get_data(as_text=True)
    recipients = client.get(f"/api/v1/jobs/{job_id}/recipients", headers=company.auth)
    return job + recipients.get_data(as_text=True)


def connection_test(app, client, company_id: int) -> dict:
    """Run the settings page's "Test connection" as the signed-in user; the stored result."""
    page = client.get(f"/admin/settings/{company_id}/").get_data(as_text=True)
    started = client.post(f"/admin/settings/{company_id}/test-connection", data={"csrf_token": csrf_from(page)},
                          headers={"Accept": "application/json"}).get_json()
    run_worker_burst(app)
    return client.get(started["result_url"]).get_json()
