"""The send loop: one worker's run over one claimed batch, chunk by chunk.

``send_batch(batch_id)`` claims the batch (``claims.claim_send``) and runs
``BatchRun`` over it: the job's state first (cancelled, paused), then the
recipients a dead holder left in flight (``claims.recover_in_flight``, by the
company's uncertain policy), then the route (``routing.first_route``) and,
for each chunk: the company's tokens (``limits.take``; none soon, or other
work runnable: the rest goes back to the ready set with its due time),
the messages (``messages.Composer``), the chunk marked ``sending`` (with the
lease renewed in the same transaction), the provider call, and its results
(``results.record_results``). A chunk the provider accepted whole has its
results committed with the next chunk's ``sending`` mark (one commit, not two,
per chunk); any other answer, the batch's last chunk, and every way out of the
run (a deferral, a stop, an error, a lost lease) commit them on their own first. A connection failure counts against the
provider's circuit and moves the run to the SMTP fallback; a read timeout
leaves the chunk uncertain; throttling backs off; a spent quota pauses the
job. What is left when the run ends waits with back-off (``reschedule``).

Crash safety comes from the database: a worker killed anywhere leaves a lease
that runs out and ``sending`` rows that the next holder turns ``uncertain``,
never a message silently sent twice or skipped. Sharing a commit keeps that:
killed before it, the chunk that was sent is still ``sending`` (uncertain, as
when killed between a call and its results) and the next one was never handed
over; after it, the one was recorded and the other is ``sending``. At most one
chunk per holder is ever in doubt.
"""
from __future__ import annotations

import logging
import random
import time
from datetime import timedelta
from email.utils import parseaddr
from types import SimpleNamespace
from typing import Any

from redis import RedisError

from core import metrics, queue, reputation, scheduler, settings, submissions, usage
from core.db import db
from core.delivery import claims, limits, results, routing, settle
from core.delivery.claims import Claim, worker_name
from core.delivery.messages import Composer
from core.delivery.routing import Route
from core.models import B_CANCELLED, B_DONE, B_FAILED, B_QUEUED, B_RETRY, PAUSED, Company, Job, utcnow
from providers import (
    ConnectionFailure,
    Message,
    PermanentError,
    ProviderError,
    QuotaExceededError,
    Result,
    ResultStatus,
    ThrottledError,
)

log = logging.getLogger(__name__)
redis_errors = (RedisError, OSError)
MAX_THROTTLE_WAITS = 30  # per batch run, before the batch is rescheduled
DEFERRED = "deferred"  # a batch run's word when the rest went back to the ready set to wait for tokens
#: ``ProviderError.code`` of a read timeout on a single API call (SES, Cloudflare):
#: the request went out and no answer came, so the whole chunk may have been sent
READ_TIMEOUTS = frozenset({"ReadTimeoutError", "ReadTimeout"})


class LostLease(Exception):
    """Another worker holds the batch now (our lease ran out): stop touching it."""


class BatchRun:
    """One worker's run over one claimed batch."""

    def __init__(self, claim: Claim):
        cfg = settings.current()
        self.claim = claim
        self.lease_s = cfg.lease_s
        self.max_attempts = cfg.max_attempts
        self.redis = queue.connection()
        company = db.session.get_one(Company, claim.company_id)
        # plain values, not ORM objects: every commit would expire them and cost a reload
        self.company = SimpleNamespace(id=company.id, uncertain_policy=company.uncertain_policy,
                                       fallback_relay=bool(company.fallback_relay),
                                       approved_domains=company.approved_sender_domains())
        self.service_from = cfg.fallback_from
        self.settings = company.settings
        self.config: dict[str, Any] = self.settings.provider_config() if self.settings else {"enabled": False}
        self.version = self.settings.updated_at if self.settings else None
        self.global_fallback = cfg.fallback_smtp
        job = db.session.get_one(Job, claim.job_id)
        self.klass = scheduler.klass_of(job.priority)
        self.composer = Composer(job, self.company)
        self.lms = self.composer.lms  # a job taken from IOMAD's email queue: its rows are marked after
        self.defer_s = 0.0        # how long the rest of the batch waits for tokens when it goes back
        self.renewed = time.monotonic()
        self.throttle_waits = 0
        self.throttle_streak = 0  # throttled calls since the last one that went through
        #: the provider accounts' own rates (by provider name), read once per run (a Redis GET per chunk before)
        self.account_rates: dict[str, float | None] = {}
        #: the last chunk's results (all sent), not yet written: they share the next chunk's commit
        self.pending: tuple | None = None

    # -- routes ---------------------------------------------------------------
    def first_route(self) -> Route | None:
        return routing.first_route(self.config, self.redis, self.company.id, self.global_fallback,
                                   self.company.fallback_relay)

    def fallback(self) -> Route | None:
        """The company's own SMTP, else the operator's relay when it is enabled for the company."""
        return routing.fallback_route(self.config, self.global_fallback, self.company.fallback_relay)

    def keepalive(self) -> None:
        if not claims.renew(self.claim, self.lease_s):
            raise LostLease()

    # -- messages -------------------------------------------------------------
    def build(self, rows) -> tuple[list[Message], list[Result], set[int]]:
        """Render the chunk (one call to the renderer, one time budget); a render failure fails only
        that recipient. Recipients the budget did not reach (returned) stay pending for the next run."""
        composed, failures, unrendered = self.composer.compose(rows)
        return ([c.message() for c in composed],
                [Result(rid, ResultStatus.FAILED, error=reason) for rid, reason in failures], unrendered)

    # -- the loop -------------------------------------------------------------
    def run(self) -> str:
        claim = self.claim
        status, cancelled = claims.job_state(claim.job_id)
        if cancelled is not None:
            return self.stop(B_CANCELLED)
        if status == PAUSED or reputation.holds(claim.job_id):  # the guard holds a tripped company's bulk mail
            return self.stop(B_QUEUED)
        claims.mark_started(claim.job_id)
        claims.recover_in_flight(claim, self.company.uncertain_policy)
        route = self.first_route()
        if route is None and routing.primary_route(self.config) is not None:
            # the provider's circuit is open and there is no fallback: wait for it to close
            return self.reschedule("provider unavailable (circuit open), no fallback", count_attempt=False,
                                   delay=limits.BREAKER_OPEN_S * random.uniform(0.25, 0.5))
        if route is None:
            settle.pause_job(claim.job_id, "delivery is disabled and no SMTP fallback is configured")
            return self.stop(B_QUEUED)
        sender = self.config.get("sender")
        if not sender:
            settle.pause_job(claim.job_id, "no sender address is configured for the company")
            return self.stop(B_QUEUED)
        return self.send_all(route, sender)

    def send_all(self, route: Route, sender: str) -> str:
        """Send the batch's sendable recipients chunk by chunk on ``route`` (falling back once)."""
        claim = self.claim
        rows = claims.load_sendable(claim)
        attempts = {r[0]: r[3] + 1 for r in rows}
        i = 0
        while i < len(rows):
            provider = routing.provider_for(self.company.id, route, self.version)
            rate = self.send_rate(provider)
            size = limits.chunk_limit(rate, provider.chunk_size)
            outcome = self.send_chunk(route, provider, sender, rows[i:i + size], rate, attempts)
            if outcome == "defer":
                self.flush_results()
                return self.defer(len(rows) - i)
            if outcome == "next":
                i += size
            elif outcome == "again":
                continue
            elif outcome == "fallback":
                self.flush_results()
                fb = self.fallback()
                if fb is None or route.kind == "fallback":
                    return self.reschedule("provider unreachable and no fallback available")
                settle.log_job_error(claim.job_id, f"batch {claim.batch_id}: {route.label} unreachable, "
                                                   f"using {fb.label}")
                route = fb
                rows = claims.load_sendable(claim)  # what is left, timed-out chunks included
                attempts = {r[0]: r[3] + 1 for r in rows}
                i = 0
            else:
                self.flush_results()
                return outcome
        self.flush_results()
        routing.provider_for(self.company.id, route, self.version).close()
        if claims.open_left(claim.job_id, claim.first_id, claim.last_id):
            return self.reschedule("some recipients will be retried")
        return self.stop(B_DONE, route=route.label)

    def send_rate(self, provider) -> float | None:
        """The company's max_send_rate, capped by the provider account's own
        limit (SES GetAccount MaxSendRate), cached in Redis for ten minutes."""
        rates = [self.config.get("max_send_rate")]
        account_rate = getattr(provider, "max_send_rate", None)
        if account_rate is not None:
            if provider.name in self.account_rates:  # read once per run, not once per chunk
                found = self.account_rates[provider.name]
            else:
                found = self.account_rate(provider.name, account_rate)
                self.account_rates[provider.name] = found
            rates.append(found)
        known = [r for r in rates if r]
        return min(known) if known else None

    def account_rate(self, name: str, ask) -> float | None:
        """The provider account's own rate, from Redis (ten minutes) or asked (``ask``)."""
        key = f"offload:account-rate:{self.company.id}:{name}"
        try:
            cached = self.redis.get(key)
            if cached is None:
                found = ask()
                self.redis.set(key, "" if found is None else str(found), ex=600)
            else:
                found = float(cached) if cached else None
        except redis_errors as exc:
            log.warning("Company %s: account rate unknown (%s)", self.company.id, type(exc).__name__)
            found = None
        return found

    def send_chunk(self, route: Route, provider, sender: str, chunk, rate, attempts) -> str:
        """Send one chunk. Returns next | again | fallback | <final word of the batch>."""
        claim = self.claim
        if not self.tokens(len(chunk), rate):
            return "defer"
        messages, render_failures, unrendered = self.build(chunk)
        ids = [r[0] for r in chunk if r[0] not in unrendered]
        if not ids:
            return "next"
        if not self.mark_sending(ids):
            return self.stop_after_cancel()
        if route.relay:  # the operator's relay never sends as an unapproved tenant domain
            sender, reply_to = routing.relay_sender(sender, self.service_from, self.company.approved_domains)
            for message in messages:
                if message.raw is not None:  # the LMS's MIME: its own From: decides
                    fields = submissions.relay_from(message.raw, self.service_from, self.company.approved_domains)
                    if fields:
                        message.headers.update(fields)
                        message.envelope_from = parseaddr(self.service_from)[1] or self.service_from
                elif reply_to:
                    message.headers["Reply-To"] = reply_to
        try:
            if messages:
                with metrics.Timer(self.redis, route.provider):
                    answer = provider.send(sender, messages)
            else:
                answer = []
        except ThrottledError as exc:
            claims.unmark_sending(ids, refund_attempt=True)
            return self.throttled(exc)
        except ConnectionFailure as exc:
            claims.unmark_sending(ids, refund_attempt=True, error=exc.reason)
            limits.breaker_failure(self.redis, claim.company_id, route.provider)
            return "fallback"
        except QuotaExceededError as exc:
            claims.unmark_sending(ids, refund_attempt=True, error=exc.reason)
            settle.pause_job(claim.job_id, f"{settle.QUOTA_PAUSE}: {exc.reason}")
            return self.stop(B_QUEUED)
        except PermanentError as exc:
            answer = [Result(m.key, ResultStatus.FAILED, error=exc.reason) for m in messages]
        except ProviderError as exc:  # retryable: these recipients come back later
            if exc.code in READ_TIMEOUTS:
                return self.timed_out(route)
            answer = [Result(m.key, ResultStatus.RETRY, error=exc.reason) for m in messages]
        self.throttle_streak = 0
        limits.breaker_success(self.redis, claim.company_id, route.provider)
        # (mark_sending renewed the lease for this chunk; the next one renews it again)
        found = answer + render_failures
        used = call_usage(route.provider, messages, answer)
        if found and all(r.status == ResultStatus.SENT for r in found):
            self.pending = (found, route.label, attempts, used)  # written with the next chunk's mark
        else:
            results.record_results(claim, found, route.label, self.max_attempts, attempts, used=used)
        return "next"

    def write_pending(self) -> None:
        """Write the last chunk's results (all sent) in the open transaction; the caller commits."""
        if self.pending is not None:
            found, label, attempts, used = self.pending
            results.record_results(self.claim, found, label, self.max_attempts, attempts, used=used, commit=False)

    def flush_results(self) -> None:
        """Commit the last chunk's results on their own, if they wait for a commit."""
        if self.pending is not None:
            self.write_pending()
            db.session.commit()
            self.pending = None

    def mark_sending(self, ids: list[int]) -> bool:
        """The chunk marked ``sending`` (``claims.mark_sending``), in one commit with the last chunk's
        results. When the mark is refused (cancelled, paused, lost), its rollback took the results
        too: they are written again and committed alone."""
        self.write_pending()
        if claims.mark_sending(self.claim, ids, self.lease_s):
            self.pending = None
            return True
        self.flush_results()
        return False

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
        claims.release(claim, B_QUEUED, next_attempt_at=utcnow() + timedelta(seconds=wait), refund_attempt=True)
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
        """The chunk could not be claimed: the job was cancelled or paused meanwhile, or the lease lost."""
        status, cancelled = claims.job_state(self.claim.job_id)
        if cancelled is not None:
            return self.stop(B_CANCELLED)
        if status == PAUSED:  # paused between chunks (the reputation guard, a spent quota): the rest waits
            return self.stop(B_QUEUED)
        raise LostLease()

    def reschedule(self, reason: str, count_attempt: bool = True, delay: float | None = None) -> str:
        """Come back later for what is left, with exponential back-off (growing with
        the batch's runs when ``count_attempt``) and jitter.

        The batch never gives up here: each recipient's own attempts bound the
        retries of what a provider refused, and an unreachable provider is an
        outage to wait out (capped back-off), not a reason to fail recipients.
        """
        if delay is None:
            delay = settle.backoff(self.claim.attempts if count_attempt else 1)
        claims.release(self.claim, B_RETRY, next_attempt_at=utcnow() + timedelta(seconds=delay), error=reason)
        self.requeue(delay)
        return B_RETRY

    def requeue(self, delay: float) -> None:
        """The batch's next attempt, sent here."""
        queue.enqueue_batches([(self.claim.batch_id, self.claim.attempts)], delay=delay)

    def stop(self, status: str, route: str | None = None, error: str | None = None) -> str:
        claims.release(self.claim, status, route=route, error=error)
        if self.lms:  # the provider has answered for this batch: mark its IOMAD rows
            queue.enqueue_lms_mark(self.company.id)
        if status in (B_DONE, B_FAILED, B_CANCELLED):
            if settle.finish_job(self.claim.job_id) is None and status == B_CANCELLED:
                queue.enqueue_finish(self.claim.job_id)
        return status


def call_usage(provider: str, messages: list[Message], answer: list[Result]) -> dict[str, float]:
    """What one provider call used (``core.usage``): the messages it accepted and their
    attachments' bytes."""
    sent = {r.key for r in answer if r.status == ResultStatus.SENT}
    if not sent or provider not in usage.PROVIDERS:
        return {}
    attached = sum(len(a.content) for m in messages if m.key in sent for a in m.attachments)
    return {f"emails:{provider}": len(sent), f"attachment_bytes:{provider}": attached}


def send_batch(batch_id: int) -> str:
    """Send one batch here. Safe to run twice: the claim decides who sends."""
    return run_claimed(batch_id, BatchRun)


def run_claimed(batch_id: int, run_class: type[BatchRun]) -> str:
    """Claim the batch and run ``run_class`` over it; a lost lease stops quietly,
    any other error releases the batch for a retry and is raised again."""
    claim = claims.claim_send(batch_id, worker_name(), settings.current().lease_s)
    if claim is None:
        return "skipped"
    run: BatchRun | None = None
    try:
        run = run_class(claim)
        return run.run()
    except LostLease:
        db.session.rollback()
        _flush_after_error(run)  # the provider accepted them: recorded, whoever holds the batch now
        log.warning("Batch %s: lease lost; another worker has it", batch_id)
        return "lost"
    except Exception:
        db.session.rollback()
        _flush_after_error(run)
        _release_after_error(claim)
        raise


def _flush_after_error(run: BatchRun | None) -> None:
    """Best effort: the results a run still held for its next commit (unwritten, they leave the
    chunk ``sending``: uncertain for the next holder, as a kill would)."""
    if run is None or run.pending is None:
        return
    try:
        run.flush_results()
    except Exception:  # the database may be the thing that failed
        db.session.rollback()
        log.warning("Batch %s: a chunk's results could not be recorded; its recipients stay in flight",
                    run.claim.batch_id)


def _release_after_error(claim: Claim) -> None:
    """Best effort: let the batch be retried soon after an unexpected error
    (the exception still reaches the queue, which records and retries the job)."""
    try:
        claims.release(claim, B_RETRY, next_attempt_at=utcnow() + timedelta(seconds=5),
                       error="worker error; retrying")
    except Exception:  # the database may be the thing that failed; the lease then expires
        db.session.rollback()
