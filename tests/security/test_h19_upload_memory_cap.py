"""Issue 26, Low 8: a global cap on upload memory in Redis.

Five CSV uploads of 19 MB took Redis from 1 to 142 MB: the caps were per user
and per company only, so enough companies could fill the memory queued work
needs (Redis runs ``noeviction``). Now all pending uploads together may hold
``OFFLOAD_MAX_UPLOAD_BYTES``; past it an upload is a 503 with ``Retry-After``,
and a confirmed or cancelled upload frees its bytes.
"""
from __future__ import annotations

import io

from core.audiences import ALL_UPLOADS, UploadStore
from core.db import db
from core.models import Template
from core.queue import connection
from tests.support.app import csrf_from
from tests.support.attack import login_as


def upload(client, template_id: int, rows: int):
    csv = ("email,firstname\n" + "".join(f"u{i}@acme.test,Ann{i}\n" for i in range(rows))).encode()
    token = csrf_from(client.get("/admin/campaigns/import").get_data(as_text=True))
    return client.post("/admin/campaigns/import", content_type="multipart/form-data", data={
        "csrf_token": token, "template_id": str(template_id), "file": (io.BytesIO(csv), "users.csv")})


def test_uploads_of_every_company_together_are_capped(app, make_company, make_user, set_settings):
    clients = []
    for name in ("Acme", "Bolt", "Cork"):
        company = make_company(name)
        tpl = Template(company_id=company.id, name="Welcome", job_type="csv_import", subject="Hi {{ firstname }}",
                       body_text="Hello {{ firstname }}")
        db.session.add(tpl)
        db.session.commit()
        client = app.test_client()
        login_as(client, make_user, f"mgr@{name.lower()}.test", company_id=company.id)
        clients.append((client, tpl.id))
    first = upload(*clients[0], 150)
    assert first.status_code == 302
    [(member, _)] = connection().zrange(ALL_UPLOADS, 0, -1, withscores=True)
    size = int(member.rsplit(b":", 1)[1])  # what one upload holds in Redis
    set_settings(max_upload_bytes=int(size * 2.5))  # two fit under the cap, the third company's does not
    assert upload(*clients[1], 150).status_code == 302
    third = upload(*clients[2], 150)
    assert third.status_code == 503 and "try again later" in third.get_data(as_text=True)
    assert 1 <= int(third.headers["Retry-After"]) <= 3600
    held = sum(int(m.rsplit(b":", 1)[1]) for m in connection().zrange(ALL_UPLOADS, 0, -1))
    assert held == 2 * size
    # cancelling the first upload frees its bytes for the others
    UploadStore(connection()).delete(first.headers["Location"].split("/import/")[1].split("?")[0])
    assert upload(*clients[2], 150).status_code == 302
