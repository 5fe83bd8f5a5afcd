"""The quick start: `flask run-demo` (what `make run` ends with) seeds the demo,
starts an embedded Redis when none answers, serves the login page, and the
printed login works, and so do the printed Moodle settings of SMTP submission;
a second start seeds nothing new."""
from __future__ import annotations

import os
import re
import smtplib
import subprocess
import time
import urllib.parse
import urllib.request
from http.cookiejar import CookieJar

import pytest

from tests.support.servers import free_port, stop_group, wait_for_port

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FLASK = os.path.join(ROOT, ".venv", "bin", "flask")


def start_demo(env: dict, port: int, log_path) -> subprocess.Popen:
    log = open(log_path, "ab")  # noqa: SIM115 - the child writes to it
    proc = subprocess.Popen([FLASK, "--app", "wsgi", "run-demo", "--port", str(port)], cwd=ROOT, env=env,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    wait_for_port(port, timeout=60, proc=proc)
    return proc


def stop(proc: subprocess.Popen) -> None:
    stop_group(proc, timeout=15)


def login(port: int, email: str, password: str) -> str:
    """Sign in through the real login form; return the overview page."""
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(CookieJar()))
    base = f"http://127.0.0.1:{port}"
    page = opener.open(f"{base}/login", timeout=10).read().decode()
    token = re.search(r'name="csrf_token"[^>]*value="([^"]+)"', page).group(1)
    data = urllib.parse.urlencode({"email": email, "password": password, "csrf_token": token}).encode()
    return opener.open(f"{base}/login", data=data, timeout=10).read().decode()


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_run_demo_serves_and_the_printed_login_works(tmp_path):
    db_path = tmp_path / "offload.db"
    dead_redis = free_port()  # nothing answers there: the demo brings its own Redis
    smtp_port = free_port()
    env = {**os.environ, "DATABASE_URL": f"sqlite:///{db_path}", "REDIS_URL": f"redis://127.0.0.1:{dead_redis}/0",
           "OFFLOAD_INSTANCE_PATH": str(tmp_path / "instance"), "OFFLOAD_SMTP_LISTEN": f"127.0.0.1:{smtp_port}"}
    env.pop("SECRET_KEY", None)
    upgrade = subprocess.run([FLASK, "--app", "wsgi", "db", "upgrade"], cwd=ROOT, env=env, capture_output=True,
                             text=True, timeout=120)
    assert upgrade.returncode == 0, upgrade.stderr
    log_path = tmp_path / "demo.log"
    port = free_port()
    proc = start_demo(env, port, log_path)
    try:
        deadline = time.monotonic() + 30
        while "Demo login:" not in log_path.read_text(errors="replace") and time.monotonic() < deadline:
            time.sleep(0.1)
        out = log_path.read_text(errors="replace")
        email, password = re.search(r"Demo login: (\S+) / (\S+)", out).groups()
        assert "embedded" in out  # no Redis answered at REDIS_URL
        assert (tmp_path / "instance" / "demo-login.txt").read_text() == password
        page = login(port, email, password)
        assert f"Signed in as {email}" in page
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/login", timeout=10) as resp:
            assert resp.status == 200
        moodle = dict(re.findall(r"^ {5}(smtp\w+) +(.+)$", out, re.M))
        assert moodle["smtphosts"] == f"127.0.0.1:{smtp_port}" and moodle["smtpauthtype"] == "LOGIN"
        wait_for_port(smtp_port, timeout=30)
        with smtplib.SMTP("127.0.0.1", smtp_port, timeout=10) as client:
            client.login(moodle["smtpuser"], moodle["smtppass"])
            reply = client.sendmail("noreply@demo.example", ["ann@example.com"],
                                    b"From: noreply@demo.example\r\nSubject: Hi\r\n\r\nHello\r\n")
        assert reply == {}
    finally:
        stop(proc)
    # a second start seeds nothing new and prints the same login
    port = free_port()
    proc = start_demo(env, port, log_path)
    try:
        deadline = time.monotonic() + 30
        while log_path.read_text(errors="replace").count("Demo login:") < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert log_path.read_text(errors="replace").count(f"Demo login: {email} / {password}") == 2
        assert f"Signed in as {email}" in login(port, email, password)
    finally:
        stop(proc)
