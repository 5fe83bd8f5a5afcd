"""Public certificate pages, no login: verification and the learner's download link.

- ``GET /verify/<code>``: an HTML page with the holder, course, dates and
  validity (valid / expired / revoked), nothing else; an unknown code is a
  404 page that says so in words and offers the lookup form again.
- ``GET /verify`` (``?code=``): the lookup form; a code typed there goes to
  its ``/verify/<code>`` page.
- ``GET /api/v1/verify/<code>``: the same facts as JSON.
- ``GET /certificates/<code>/download``: the stable link mailed to the
  learner; redirects to a presigned URL of the PDF that expires in minutes.
- ``GET /certificates/files/<key>?expires=&sig=``: that presigned URL when the
  PDFs are on this machine's disk (``local`` storage).

An unknown code is a 404; every lookup runs the same query and a
constant-time comparison (``core.certificates.find_by_code``). Each
client IP gets ``OFFLOAD_VERIFY_RATE_PER_MIN`` lookups a minute (default
60) while Redis answers.
"""
from __future__ import annotations

import logging
import time

from flask import Blueprint, Response, abort, jsonify, redirect, render_template, request, url_for
from redis import RedisError
from werkzeug.exceptions import TooManyRequests

from core import certificates as service
from core import settings, usage
from core.db import db
from core.queue import connection
from providers.base import ProviderError
from providers.storage import LocalStorage, ObjectNotFound, content_disposition

log = logging.getLogger(__name__)
bp = Blueprint("verify", __name__)
SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; "
                               "form-action 'self'; frame-ancestors 'none'",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "X-Robots-Tag": "noindex",
}


@bp.before_request
def rate_limit():
    """429 once this client made more lookups this minute than allowed."""
    limit = settings.current().verify_rate_per_min
    key = f"offload:verify-rate:{request.remote_addr or '-'}:{int(time.time() // 60)}"
    try:
        pipe = connection().pipeline()
        count = pipe.incr(key).expire(key, 120).execute()[0]
    except (RedisError, OSError) as exc:  # the limit is a courtesy; the lookup stays constant-time
        log.warning("verification rate limit unavailable: %s", type(exc).__name__)
        return None
    if count > limit:
        raise TooManyRequests("Too many verification requests; try again in a minute.", retry_after=60)
    return None


@bp.after_request
def security_headers(response):
    response.headers.update(SECURITY_HEADERS)
    return response


def _certificate_or_404(code: str):
    cert = service.find_by_code(code)
    if cert is None:
        abort(404)
    return cert


#: the longest code the lookup form takes (issued codes are far shorter)
MAX_CODE = 64


@bp.get("/verify")
def lookup():
    """The lookup form; with ``?code=``, that code's page."""
    code = request.args.get("code", "").strip()
    if code:
        return redirect(url_for("verify.page", code=code[:MAX_CODE]), code=303)
    return render_template("certificates/verify.html", view=None, code="")


@bp.get("/verify/<code>")
def page(code: str):
    cert = service.find_by_code(code)
    if cert is None:  # the same page, saying so, with the form to try another code
        return render_template("certificates/verify.html", view=None, code=code[:MAX_CODE], not_found=True), 404
    return render_template("certificates/verify.html", view=service.public_view(cert), code=cert.code)


@bp.get("/api/v1/verify/<code>")
def as_json(code: str):
    return jsonify(service.public_view(_certificate_or_404(code)))


@bp.get("/certificates/<code>/download")
def download(code: str):
    """Redirect to a fresh presigned URL; revoked certificates are gone (410)."""
    cert = _certificate_or_404(code)
    if cert.revoked_at is not None:
        abort(410)
    try:
        url = service.presigned_link(cert)
    except ProviderError as exc:
        log.warning("Certificate %s: no download link: %s", cert.id, exc.reason)
        abort(503)
    if cert.job_id is not None:  # the bucket read the link leads to (its job's cost)
        usage.add(cert.company_id, cert.job_id, {f"storage:get:{cert.storage}": 1})
        db.session.commit()
    return redirect(url, code=302)


@bp.get("/certificates/files/<path:key>")
def local_file(key: str):
    """A PDF kept by ``local`` storage, for a signed, unexpired link."""
    try:
        storage = LocalStorage(service.local_storage_config())
    except ProviderError:
        abort(404)
    if not storage.check_link(key, request.args.get("expires", ""), request.args.get("sig", "")):
        abort(404)
    try:
        chunks = storage.iter_chunks(key)
        first = next(chunks, b"")
    except ObjectNotFound:
        abort(404)
    return Response(_chain(first, chunks), mimetype="application/pdf",
                    headers={"Content-Disposition": content_disposition(key)})


def _chain(first: bytes, rest):
    yield first
    yield from rest


def init_app(app) -> None:
    app.register_blueprint(bp)
