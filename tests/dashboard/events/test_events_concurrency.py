"""Many posters on two web processes, two workers closing windows meanwhile:
every event's address reaches the SES emulator exactly once."""
from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import threading
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path

import requests
from sqlalchemy import func, select

from core.db import db
from core.events import EVENT_TYPES
from core.models import Job, Recipient
from tests.support.events import busy, by_recipient, make_template, ses_settings
from tests.support.servers import free_port, stop_group, wait_for_port

ROOT = Path(__file__).resolve().parents[3]
SETTINGS = {"bulk_window_s": 0.3, "bulk_threshold": 5, "bulk_max_hold_s": 0.8, "sweep_s": 2}
POSTERS, PER_POSTER = 20, 15


@contextmanager
def child(args: list[str], overrides: dict, name: str):
    """A child process of this test (its own session), stopped at the end."""
    log = open(os.path.join(os.environ.get("TMPDIR", "/tmp"), f"offload-test-events-{name}.log"), "wb")
    env = {**os.environ, "OFFLOAD_TEST_SETTINGS": json.dumps(overrides), "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "tests.support.events_serve", *args], cwd=ROOT, env=env,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield proc
    finally:
        stop_group(proc)
        log.close()


@contextmanager
def live_server(app):
    """The test's own app served on a thread: web process number one."""
    from werkzeug.serving import make_server

    server = make_server("127.0.0.1", free_port(), app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()


def event_name(i: int) -> str:
    """Posters 0-3 start with a re-engagement event (4 at once: single sends); the rest alternate."""
    if i % PER_POSTER == 0 and i < 4 * PER_POSTER:
        return "reengagement_campaign_triggered"
    return "user_created" if i % 2 else "license_allocated"


def poster(base_url: str, token: str, numbers: list[int], errors: list) -> None:
    session = requests.Session()
    rnd = random.Random(numbers[0])
    for i in numbers:
        name = event_name(i)
        body = {"event": name, "email": f"c{i}@example.com", "data": {"firstname": f"F{i}", "password": f"pw{i}",
                                                                     "license": f"L{i}"}}
        try:
            resp = session.post(f"{base_url}/api/v1/events", json=body,
                                headers={"Authorization": f"Bearer {token}"}, timeout=30)
            if resp.status_code != 202:
                errors.append((i, resp.status_code, resp.text[:200]))
        except requests.RequestException as exc:
            errors.append((i, type(exc).__name__))
        time.sleep(rnd.uniform(0, 0.25))


def test_20_posters_on_2_processes_lose_and_duplicate_nothing(app, make_company, ses_local, migrated,
                                                               redis_server, set_settings):
    ses_local.clear()
    set_settings(**SETTINGS)
    company = make_company("Concurrent Co", **ses_settings(ses_local))
    make_template(company.id, "csv_import")
    make_template(company.id, "reengagement", subject="We miss you {{ firstname }}", body_text="Come back")
    make_template(company.id, "license_allocation", subject="Licence {{ license }}", body_text="{{ license }}",
                  body_html=None)
    child_settings = {**SETTINGS, "database_url": migrated, "redis_url": redis_server}
    port_b = free_port()
    total = POSTERS * PER_POSTER
    with ExitStack() as stack:
        web_b = stack.enter_context(child(["web", str(port_b)], child_settings, "web"))
        for n in range(2):
            stack.enter_context(child(["worker"], child_settings, f"worker{n}"))
        url_a = stack.enter_context(live_server(app))
        wait_for_port(port_b, 60, web_b)
        urls = [url_a, f"http://127.0.0.1:{port_b}"]
        errors: list = []
        threads = [threading.Thread(target=poster, args=(urls[t % 2], company.token,
                                                         list(range(t * PER_POSTER, (t + 1) * PER_POSTER)), errors))
                   for t in range(POSTERS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []

        deadline = time.monotonic() + 120
        while len(by_recipient(ses_local.store())) < total or busy(app):
            assert time.monotonic() < deadline, "not every event was sent"
            time.sleep(0.25)

    received = by_recipient(ses_local.store())
    assert received == {f"c{i}@example.com": 1 for i in range(total)}
    db.session.expire_all()
    emails = db.session.execute(select(Recipient.email).where(Recipient.company_id == company.id)).scalars().all()
    assert sorted(emails) == sorted(received)
    jobs = db.session.execute(select(Job.type, func.count(), func.sum(Job.email_count))
                              .where(Job.company_id == company.id).group_by(Job.type)).all()
    expected: dict[str, int] = {}
    for i in range(total):
        jtype = EVENT_TYPES[event_name(i)]
        expected[jtype] = expected.get(jtype, 0) + 1
    assert {t: n for t, _, n in jobs} == expected
    assert {t: n for t, n, _ in jobs}["reengagement"] == 4  # below the threshold: one job each
