"""The send jobs: plan a job into batches, send a batch, finish the job.

Crash safety comes from the database (``core.batches``): a batch is claimed
with a lease before any work, each chunk of recipients is marked
``sending`` right before its provider call and recorded right after, so a
worker killed in between leaves ``sending`` rows that the next holder
turns into ``uncertain`` instead of silently re-sending or skipping them.
"""
from __future__ import annotations

import logging
import random
import time
from datetime import timedelta
from types import SimpleNamespace

from redis import RedisError

from core.db import db
from core.models import B_CANCELLED, B_DONE, B_FAILED, B_QUEUED, B_RETRY, Company, Job, PAUSED, utcnow
from core.queue import connection
from core.rendering import CompiledTemplate, RenderError
from providers import (ConnectionFailure, Message, PermanentError, ProviderError, QuotaExceededError, Result,
                       ResultStatus, ThrottledError)
from core import batches, metrics, queue, scheduler, settings
from core.delivery import claims, results as delivery_results
from core.delivery.claims import worker_name
from core.lms import mail_hook
from tasks import certificates, limits
from tasks.routing import Route, fallback_route, primary_route, provider_for, relay_sender
from tasks.headers import extra_headers

log = logging.getLogger(__name__)
redis_errors = (RedisError, OSError)
QUOTA_PAUSE = "sending quota exhausted"  # the sweep resumes such jobs later (tasks.sweep)
MAX_THROTTLE_WAITS = 30  # per batch run, before the batch is rescheduled
DEFERRED = "deferred"  # a batch run's word when the rest went back to the ready set to wait for tokens
#: ``ProviderError.code`` of a read timeout on a single API call (SES, Cloudflare):
#: the request went out and no answer came, so the whole chunk may have been sent
READ_TIMEOUTS = frozenset({"ReadTimeoutError", "ReadTimeout"})


def plan_job(job_id: int) -> int:
    """Split a job into batches and queue them; returns how many were queued."""
    job = db.session.get(Job, job_id)
    if job is None or job.is_final or job.status == PAUSED:
        return 0
    if job.cancel_requested_at is not None:
        queue.enqueue_finish(job_id)
        return 0
    if certificates.awaiting_issue(job):  # certificate jobs: PDFs first (tasks.certificates)
        return 0
    batch_ids = batches.create_batches(job_id, settings.current().batch_size)
    if not batch_ids:
        finish_job(job_id)
        return 0
    delivery = db.session.get(Company, job.company_id).settings
    # jobs taken from IOMAD's queue are sent here (the LMS hook: Reply-To, attachments, marking rows),
    # on the company's SMTP route in offload mode
    if delivery is not None and delivery.enabled and delivery.mode == "offload" and job.source != "lms":
        queue.enqueue_submit(batch_ids)
    else:
        queue.enqueue_batches([(bid, 0) for bid in batch_ids])
    log.info("Job %s: planned %s batches", job_id, len(batch_ids))
    return len(batch_ids)


def finish_job(job_id: int) -> str | None:
    """Set the final status once every batch is done (safe to call any time)."""
    status = batches.finish_job(job_id)
    if status:
        log.info("Job %s: %s", job_id, status)
    return status


class BatchRun:
    """One worker's run over one claimed batch."""

    def __init__(self, claim: claims.Claim):
        cfg = settings.current()
        self.claim = claim
        self.lease_s = cfg.lease_s
        self.max_attempts = cfg.max_attempts
        self.redis = connection()
        company = db.session.get(Company, claim.company_id)
        # plain values, not ORM objects: every commit would expire them and cost a reload
        self.company = SimpleNamespace(id=company.id, uncertain_policy=company.uncertain_policy,
                                       fallback_relay=bool(company.fallback_relay),
                                       approved_domains=company.approved_sender_domains())
        self.service_from = cfg.fallback_from
        self.settings = company.settings
        self.config = self.settings.provider_config() if self.settings else {"enabled": False}
        self.version = self.settings.updated_at if self.settings else None
        self.global_fallback = cfg.fallback_smtp
        job = db.session.get(Job, claim.job_id)
        self.job_type, self.priority = job.type, job.priority
        self.klass = scheduler.klass_of(job.priority)
        self.defer_s = 0.0        # how long the rest of the batch waits for tokens when it goes back
        self.renewed = time.monotonic()
        self.template = CompiledTemplate(job.subject, job.body_text, job.body_html)
        self.certificates = certificates.mail_for(job)  # None unless a certificate job
        self.lms = mail_hook.mail_for(job)  # None unless a job taken from IOMAD's email queue
        self.throttle_waits = 0
        self.throttle_streak = 0  # throttled calls since the last one that went through

    # -- routes ---------------------------------------------------------------
    def first_route(self) -> Route | None:
        route = primary_route(self.config)
        # an offload company's batch is only ever sent here on the SMTP fallback
        if route is None or route.kind == "offload" or \
                limits.breaker_is_open(self.redis, self.company.id, route.provider):
            return self.fallback()
        return route

    def fallback(self) -> Route | None:
        """The company's own SMTP, else the operator's relay when it is enabled for the company."""
        return fallback_route(self.config, self.global_fallback, self.company.fallback_relay)

    def keepalive(self) -> None:
        if not claims.renew(self.claim, self.lease_s):
            raise LostLease()

    # -- messages -------------------------------------------------------------
    def build(self, rows) -> tuple[list[Message], list[Result], set[int]]:
        """Render the chunk (one call to the renderer, one time budget); a render failure fails only
        that recipient. Recipients the budget did not reach (returned) stay pending for the next run."""

        messages, failures, unrendered = [], [], set()
        for (rid, email, data, _attempts), r in zip(rows, self.template.render_many([row[2] for row in rows]),
                                                   strict=True):
            if r is None:
                unrendered.add(rid)
                continue
            try:
                attachments = self.certificates.attachments(rid, data) if self.certificates else []
                if isinstance(r, RenderError):
                    raise r
                if self.lms:
                    attachments = attachments + self.lms.attachments(data)
                    r = self.lms.adjust(r)
            except RenderError as exc:
                failures.append(Result(rid, ResultStatus.FAILED, error=f"render_error: {exc}"))
                continue
            headers = extra_headers(self.company, self.job_type, self.priority, rid, email)
            if self.lms:
                headers.update(self.lms.headers(data))
            messages.append(Message(key=rid, to=email, subject=r.subject, text=r.text, html=r.html, headers=headers,
                                    attachments=attachments))
        return messages, failures, unrendered

    # -- the loop -------------------------------------------------------------
    def run(self) -> str:
        claim = self.claim
        status, cancelled = claims.job_state(claim.job_id)
        if cancelled is not None:
            return self.stop(B_CANCELLED)
        if status == PAUSED:
            return self.stop(B_QUEUED)
        claims.mark_started(claim.job_id)
        claims.recover_in_flight(claim, self.company.uncertain_policy)
        route = self.first_route()
        if route is None and primary_route(self.config) is not None:
            # the provider's circuit is open and there is no fallback: wait for it to close
            return self.reschedule("provider unavailable (circuit open), no fallback", count_attempt=False,
                                   delay=limits.BREAKER_OPEN_S * random.uniform(0.25, 0.5))
        if route is None:
            batches.pause_job(claim.job_id, "delivery is disabled and no SMTP fallback is configured")
            return self.stop(B_QUEUED)
        sender = self.config.get("sender")
        if not sender:
            batches.pause_job(claim.job_id, "no sender address is configured for the company")
            return self.stop(B_QUEUED)
        rows = claims.load_sendable(claim)
        attempts = {r[0]: r[3] + 1 for r in rows}
        i = 0
        while i < len(rows):
            provider = provider_for(self.company.id, route, self.version)
            rate = self.send_rate(provider)
            size = limits.chunk_limit(rate, provider.chunk_size)
            chunk = rows[i:i + size]
            outcome = self.send_chunk(route, provider, sender, chunk, rate, attempts)
            if outcome == "defer":
                return self.defer(len(rows) - i)
            if outcome == "next":
                i += size
            elif outcome == "again":
                continue
            elif outcome == "fallback":
                fb = self.fallback()
                if fb is None or route.kind == "fallback":
                    return self.reschedule("provider unreachable and no fallback available")
                batches.log_job_error(claim.job_id, f"batch {claim.batch_id}: {route.label} unreachable, "
                                                  f"using {fb.label}")
                route = fb
                rows = claims.load_sendable(claim)  # what is left, timed-out chunks included
                attempts = {r[0]: r[3] + 1 for r in rows}
                i = 0
            else:
                return outcome
        provider_for(self.company.id, route, self.version).close()
        if claims.open_left(claim.job_id, claim.first_id, claim.last_id):
            return self.reschedule("some recipients will be retried")
        return self.stop(B_DONE, route=route.label)

    def send_rate(self, provider) -> float | None:
        """The company's max_send_rate, capped by the provider account's own
        limit (SES GetAccount MaxSendRate), cached in Redis for ten minutes."""
        rates = [self.config.get("max_send_rate")]
        account_rate = getattr(provider, "max_send_rate", None)
        if account_rate is not None:
            key = f"offload:account-rate:{self.company.id}:{provider.name}"
            try:
                cached = self.redis.get(key)
                if cached is None:
                    found = account_rate()
                    self.redis.set(key, "" if found is None else str(found), ex=600)
                else:
                    found = float(cached) if cached else None
            except redis_errors as exc:
                log.warning("Company %s: account rate unknown (%s)", self.company.id, type(exc).__name__)
                found = None
            rates.append(found)
        known = [r for r in rates if r]
        return min(known) if known else None

    def send_chunk(self, route: Route, provider, sender: str, chunk, rate, attempts) -> str:
        """Send one chunk. Returns next | again | fallback | <final word of the batch>."""
        claim = self.claim
        if not self.tokens(len(chunk), rate):
            return "defer"
        messages, render_failures, unrendered = self.build(chunk)
        ids = [r[0] for r in chunk if r[0] not in unrendered]
        if not ids:
            return "next"
        if not claims.mark_sending(claim, ids, self.lease_s):
            return self.stop_after_cancel()
        if route.relay:  # the operator's relay never sends as an unapproved tenant domain
            sender, reply_to = relay_sender(sender, self.service_from, self.company.approved_domains)
            for message in messages:
                if reply_to:
                    message.headers["Reply-To"] = reply_to
        try:
            if messages:
                with metrics.Timer(self.redis, route.provider):
                    results = provider.send(sender, messages)
            else:
                results = []
        except ThrottledError as exc:
            claims.unmark_sending(ids, refund_attempt=True)
            return self.throttled(exc)
        except ConnectionFailure as exc:
            claims.unmark_sending(ids, refund_attempt=True, error=exc.reason)
            limits.breaker_failure(self.redis, claim.company_id, route.provider)
            return "fallback"
        except QuotaExceededError as exc:
            claims.unmark_sending(ids, refund_attempt=True, error=exc.reason)
            batches.pause_job(claim.job_id, f"{QUOTA_PAUSE}: {exc.reason}")
            return self.stop(B_QUEUED)
        except PermanentError as exc:
            results = [Result(m.key, ResultStatus.FAILED, error=exc.reason) for m in messages]
        except ProviderError as exc:  # retryable: these recipients come back later
            if exc.code in READ_TIMEOUTS:
                return self.timed_out(route)
            results = [Result(m.key, ResultStatus.RETRY, error=exc.reason) for m in messages]
        self.throttle_streak = 0
        limits.breaker_success(self.redis, claim.company_id, route.provider)
        # (mark_sending renewed the lease for this chunk; the next one renews it again)
        delivery_results.record_results(claim, results + render_failures, route.label, self.max_attempts, attempts)
        return "next"

    def tokens(self, n: int, rate: float | None) -> bool:
        """Take the chunk's sends from the company's shared bucket. Naps (short
        slices) only while nothing else is runnable and the tokens come soon;
        False: the rest of the batch goes back to the ready set (``defer``)."""
        while True:
            granted, wait, why = limits.take(self.redis, self.company.id, n, rate, self.klass)
            if granted:
                return True
            self.defer_s = wait
            if why == "yield" or wait > limits.HOLD_S or limits.other_work_waiting(self.company.id):
                return False
            limits.nap(min(wait, limits.NAP_S))
            if time.monotonic() - self.renewed > self.lease_s / 4:
                self.keepalive()
                self.renewed = time.monotonic()

    def defer(self, left: int) -> str:
        """Give the batch back, due when the company's tokens are: the worker
        takes other runnable work meanwhile (the claim's attempt is refunded)."""
        wait = max(self.defer_s, 0.01)
        claim = self.claim
        claims.release(claim, B_QUEUED, next_attempt_at=utcnow() + timedelta(seconds=wait),
                              refund_attempt=True)
        try:
            scheduler.add(self.redis, [scheduler.Entry(self.klass, claim.company_id, claim.batch_id, left,
                                                       scheduler.DIRECT, time.time() + wait)])
        except redis_errors as exc:  # the sweep re-adds a waiting batch that has no entry
            log.warning("Batch %s: not put back in the ready set (%s)", claim.batch_id, type(exc).__name__)
        queue.kick(delay=wait)
        log.debug("Batch %s: %s left wait %.2f s for the company's rate; other work goes first", claim.batch_id,
                 left, wait)
        return DEFERRED

    def timed_out(self, route: Route) -> str:
        """The provider took the call and never answered: it may have sent the
        chunk, so its recipients are uncertain (counted; resent or failed per
        the company's policy), and the provider counts as unavailable."""
        self.keepalive()  # still ours? (a lease shorter than the provider's timeout is not)
        claims.recover_in_flight(self.claim, self.company.uncertain_policy)
        limits.breaker_failure(self.redis, self.claim.company_id, route.provider)
        return "fallback"

    def throttled(self, exc: ThrottledError) -> str:
        level = limits.throttle_level(self.redis, self.claim.company_id, bump=True)
        self.throttle_waits += 1
        self.throttle_streak += 1
        if self.throttle_waits > MAX_THROTTLE_WAITS:
            return self.reschedule("throttled by the provider", count_attempt=False)
        # the shared level grows while any worker is throttled; a call that went
        # through resets this run's streak, so scattered throttles cost short waits
        delay = limits.throttle_delay(min(level, self.throttle_streak), exc.retry_after)
        if limits.other_work_waiting(self.company.id):  # no sleeping while others could be served
            return self.reschedule("throttled by the provider", count_attempt=False, delay=delay)
        end = time.monotonic() + delay
        while time.monotonic() < end:
            time.sleep(min(1.0, max(0.0, end - time.monotonic())))
            self.keepalive()
        return "again"

    def stop_after_cancel(self) -> str:
        _, cancelled = claims.job_state(self.claim.job_id)
        if cancelled is not None:
            return self.stop(B_CANCELLED)
        raise LostLease()

    def reschedule(self, reason: str, count_attempt: bool = True, delay: float | None = None) -> str:
        """Come back later for what is left, with exponential back-off (growing with
        the batch's runs when ``count_attempt``) and jitter.

        The batch never gives up here: each recipient's own attempts bound the
        retries of what a provider refused, and an unreachable provider is an
        outage to wait out (capped back-off), not a reason to fail recipients.
        """
        if delay is None:
            delay = batches.backoff(self.claim.attempts if count_attempt else 1)
        claims.release(self.claim, B_RETRY, next_attempt_at=utcnow() + timedelta(seconds=delay),
                            error=reason)
        queue.enqueue_batches([(self.claim.batch_id, self.claim.attempts)], delay=delay)
        return B_RETRY

    def stop(self, status: str, route: str | None = None, error: str | None = None) -> str:
        claims.release(self.claim, status, route=route, error=error)
        if self.lms:  # the provider has answered for this batch: mark its IOMAD rows
            queue.enqueue_lms_mark(self.company.id)
        if status in (B_DONE, B_FAILED, B_CANCELLED):
            if finish_job(self.claim.job_id) is None and status == B_CANCELLED:
                queue.enqueue_finish(self.claim.job_id)
        return status


class LostLease(Exception):
    """Another worker holds the batch now (our lease ran out): stop touching it."""


def send_batch(batch_id: int) -> str:
    """RQ job: send one batch. Safe to run twice: the claim decides who sends."""
    return run_claimed(batch_id, BatchRun)


def run_claimed(batch_id: int, run_class: type[BatchRun]) -> str:
    """Claim the batch and run ``run_class`` over it; a lost lease stops quietly,
    any other error releases the batch for a retry and reaches RQ."""
    claim = claims.claim_send(batch_id, worker_name(), settings.current().lease_s)
    if claim is None:
        return "skipped"
    try:
        return run_class(claim).run()
    except LostLease:
        db.session.rollback()
        log.warning("Batch %s: lease lost; another worker has it", batch_id)
        return "lost"
    except Exception:
        db.session.rollback()
        _release_after_error(claim)
        raise


def _release_after_error(claim: claims.Claim) -> None:
    """Best effort: let the batch be retried soon after an unexpected error
    (the exception still reaches RQ, which records and retries the job)."""
    try:
        claims.release(claim, B_RETRY, next_attempt_at=utcnow() + timedelta(seconds=5),
                            error="worker error; retrying")
    except Exception:  # the database may be the thing that failed; the lease then expires
        db.session.rollback()
