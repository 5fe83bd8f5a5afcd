"""Offload submission: batches go to the company's own cloud queue (CONTRACT §5),
its cloud worker sends them and reports back with a signed callback (§4,
``core.delivery.results.record_callback``).

``submit_batches(batch_ids)`` claims up to ten batches (``claims.claim_submit``:
each is ``submitted`` from the moment it is claimed, with a callback deadline
past its lease), builds their messages and hands them to the company's queue
in one ``providers.offload`` submit call (``Submission``). A worker that dies
mid-submit leaves a batch that the uncertain policy settles at its deadline
(``core.delivery.recovery.settle_overdue``), never one that is silently sent
twice or lost. When the queue cannot be reached, the batches take the SMTP
fallback here (``send_fallback``, ``FallbackRun``).

Each recipient is rendered here (``core.delivery.messages``, exactly as
direct mode renders it); a batch goes as as many messages as its size needs
(``providers.offload.split_recipients``), each keyed by a ``delivery_id``
the cloud workers record what they sent under. With ``offload_url`` set, the
``https`` transport POSTs them instead of queueing them (route
``offload:https``). Messages carry recipient data (passwords): they exist
only in memory on their way to the queue and are never logged.
"""
from __future__ import annotations

import base64
import logging
from collections import defaultdict
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import select, text, update

from core import metrics, queue, reputation, settings, submissions, usage
from core.certificates import open_storage
from core.db import db
from core.delivery import claims, limits, results, routing, settle
from core.delivery.claims import Claim, worker_name
from core.delivery.messages import Composed, Composer
from core.delivery.routing import Route
from core.delivery.send import BatchRun, run_claimed
from core.models import (
    B_CANCELLED,
    B_DONE,
    B_FAILED,
    B_QUEUED,
    B_RETRY,
    B_SUBMITTED,
    PAUSED,
    RECIPIENT_CLAIMABLE,
    Batch,
    Company,
    Job,
    sql_in,
    utcnow,
)
from providers import ConnectionFailure, PermanentError, ProviderError, mime, registry
from providers.offload import EndpointRejected, delivery_id, get_transport, split_recipients
from providers.storage import Storage

log = logging.getLogger(__name__)

CALLBACK_PATH = "/callbacks/v1/batches"
#: how long the link to an SMTP message too large for the queue works (CONTRACT: two days)
RAW_LINK_S = 2 * 86400


def callback_url(company_id: int) -> str:
    """Where the cloud worker posts its callback. The company id in the query
    names whose secret signs it, so the service verifies before it parses."""
    return f"{settings.current().public_url}{CALLBACK_PATH}?company={company_id}"


@dataclass
class Item:
    """One claimed batch on its way to the queue."""

    claim: Claim
    batch_number: int
    #: bytes of the certificate attachments its messages carry
    attached: int = 0


class Submission:
    """The claimed batches of one company, submitted in one transport call."""

    def __init__(self, company_id: int, held: list[Claim]):
        cfg = settings.current()
        self.company = db.session.get_one(Company, company_id)
        self.delivery = self.company.settings
        self.config: dict[str, Any] = self.delivery.provider_config() if self.delivery else {"enabled": False}
        # the HTTPS transport signs with the company's callback secret (and, while a rotation's overlap
        # lasts, with the previous one too)
        self.config["callback_secret"] = self.company.callback_secret
        self.config["callback_secrets"] = self.company.callback_secrets()
        #: the transport the batches take (``sqs``, ``cloudflare_queue``, ``https``); None: none for this sender
        self.transport = registry.offload_transport(self.config)
        self.route = Route("offload", self.transport, self.config).label if self.transport else None
        self._jobs: dict[int, Job] = {}
        self._composers: dict[int, Composer] = {}
        #: SMTP submission: the raw recipients built, the stored messages linked, and the storage holding them
        self._raw: dict[int, Composed] = {}
        self._links: dict[int, str] = {}
        self._storage: Storage | None = None
        self.global_fallback = cfg.fallback_smtp
        self.max_attempts = cfg.max_attempts
        self.timeout_s = cfg.callback_timeout_s
        self.redis = queue.connection()
        numbers = dict(db.session.execute(select(Batch.id, Batch.batch_number)
                                          .where(Batch.id.in_([c.batch_id for c in held]))).all())
        self.items = [Item(c, numbers[c.batch_id]) for c in held]
        self.outcome: dict[str, int] = defaultdict(int)
        #: batches whose messages went to the queue call (the queue may have them)
        self.handed: set[int] = set()

    @property
    def way(self) -> str:
        """The transport, for the batches that take one (``run`` sends the others here first)."""
        if self.transport is None:
            raise RuntimeError("no transport: these batches are sent here")
        return self.transport

    def run(self) -> dict[str, int]:
        items = self.live_items()
        if not items:
            return self.outcome
        here = [i for i in items if self.transport is None or
                routing.way_of(self.job(i.claim.job_id).source, self.delivery) != routing.SUBMIT]
        if here:  # not for the cloud queue (switched to direct or disabled since planning): sent here
            for item in here:
                claims.release(item.claim, B_QUEUED)
            queue.enqueue_batches([(i.claim.batch_id, i.claim.attempts) for i in here])
            self.outcome["direct"] += len(here)
            items = [i for i in items if i not in here]
            if not items:
                return self.outcome
        if limits.breaker_is_open(self.redis, self.company.id, self.way):
            return self.to_fallback(items, f"the circuit for {self.way} is open")
        if not self.config.get("sender"):
            return self.pause(items, "no sender address is configured for the company")
        self.submit(items)
        return self.outcome

    def live_items(self) -> list[Item]:
        """Drop batches of cancelled or paused jobs (released accordingly)."""
        live = []
        for item in self.items:
            status, cancelled = claims.job_state(item.claim.job_id)
            if cancelled is not None:
                claims.release(item.claim, B_CANCELLED)
                if settle.finish_job(item.claim.job_id) is None:
                    queue.enqueue_finish(item.claim.job_id)
                self.outcome["cancelled"] += 1
            elif status == PAUSED or reputation.holds(item.claim.job_id):
                claims.release(item.claim, B_QUEUED)
                self.outcome["paused"] += 1
            else:
                live.append(item)
        return live

    def pause(self, items: list[Item], reason: str) -> dict[str, int]:
        for item in items:
            settle.pause_job(item.claim.job_id, reason)
            claims.release(item.claim, B_QUEUED)
        self.outcome["paused"] += len(items)
        return self.outcome

    # -- the queue call ---------------------------------------------------------
    def build(self, items: list[Item], limit: int) -> list[tuple[Item, list[tuple[str, dict]]]]:
        """CONTRACT §5 messages for each batch, each within ``limit`` encoded bytes.

        Every recipient is rendered here, with the same sandbox and headers as
        direct mode (``core.delivery.messages``), so the cloud workers send exactly
        what direct mode would. A recipient that cannot be rendered fails
        alone (``render_error``); a certificate attachment too large for one
        message is dropped (the body carries the certificate link anyway); a
        recipient still too large fails with ``message_too_large``. A batch
        with nothing left to send is done.
        """
        built = []
        for item in items:
            claim = item.claim
            entries, ids, failures, unrendered = self.render(claim, claims.load_sendable(claim))
            if unrendered:  # the render budget ran out: settle what failed, the rest waits its turn
                if failures:
                    results.fail_recipients(claim, failures)
                self.retry([item], f"{unrendered} recipients were not rendered in time; they wait")
                continue
            envelope = self.envelope(claim, item.batch_number)
            parts, too_large = split_recipients(envelope, entries, limit)
            for index in too_large:
                if "raw" in entries[index]:  # the LMS's MIME too large for the queue: a link to a stored copy
                    entries[index] = self.linked(claim, ids[index], entries[index])
                else:  # a certificate too large to attach: the link in the body stays
                    entries[index].pop("attachments", None)
            if too_large:
                retried, still = split_recipients(envelope, [entries[i] for i in too_large], limit)
                parts.extend([[too_large[i] for i in part] for part in retried])
                failures.extend((ids[too_large[i]], entries[too_large[i]].get("_too_large") or
                                 f"message_too_large: more than {limit} bytes for one recipient") for i in still)
            if failures:
                results.fail_recipients(claim, failures)
            if not parts:
                self.finish(item, B_DONE)
                continue
            item.attached = sum(len(a["content"]) * 3 // 4 for part in parts for i in part
                                for a in entries[i].get("attachments", ()))
            messages = []
            for part in parts:
                key = delivery_id(claim.batch_id, [ids[i] for i in part])
                messages.append((key, {**envelope, "delivery_id": key, "recipients": [entries[i] for i in part]}))
            built.append((item, messages))
        return built

    def envelope(self, claim: Claim, batch_number: int) -> dict:
        """A batch message without its recipients; ``delivery_id`` at its final length."""
        job = self.job(claim.job_id)
        message = {"job_id": job.id, "batch_number": batch_number, "company_id": claim.company_id,
                   "callback_url": callback_url(claim.company_id), "sender": self.config["sender"],
                   "template": {"subject": job.subject, "text": job.body_text or "", "html": job.body_html or ""},
                   "delivery_id": delivery_id(claim.batch_id, [])}
        if self.config.get("configuration_set"):
            message["configuration_set"] = self.config["configuration_set"]
        return message

    def job(self, job_id: int) -> Job:
        if job_id not in self._jobs:
            self._jobs[job_id] = db.session.get_one(Job, job_id)
        return self._jobs[job_id]

    def render(self, claim: Claim, rows) -> tuple[list[dict], list[int], list[tuple[int, str]], int]:
        """Each sendable recipient's entry (``email``, ``data``, ``rendered``, and
        ``headers`` / ``attachments`` when there are any), their ids, failures, and how many
        the batch's render budget did not reach (one call to the renderer for the batch)."""
        if claim.job_id not in self._composers:
            self._composers[claim.job_id] = Composer(self.job(claim.job_id), self.company)
        composed, failures, unrendered = self._composers[claim.job_id].compose(rows)
        entries = []
        for c in composed:
            if c.raw is not None:  # SMTP submission: the MIME as the LMS wrote it, our headers on top
                self._raw[c.recipient_id] = c
                try:
                    data = mime.outgoing(c.raw, c.headers)
                except ValueError:
                    failures.append((c.recipient_id, "invalid_header"))
                    continue
                entries.append({"email": c.email, "raw": base64.b64encode(data).decode("ascii"),
                                "envelope_from": c.envelope_from})
                continue
            entry: dict[str, Any] = {"email": c.email, "data": c.data or {},
                     "rendered": {"subject": c.subject, "text": c.text, "html": c.html}}
            if c.headers:
                entry["headers"] = c.headers
            if c.attachments:
                entry["attachments"] = [{"filename": a.filename, "content_type": a.content_type,
                                         "content": base64.b64encode(a.content).decode("ascii")}
                                        for a in c.attachments]
            entries.append(entry)
        failed = {rid for rid, _ in failures}
        return entries, [c.recipient_id for c in composed if c.recipient_id not in failed], failures, len(unrendered)

    def linked(self, claim: Claim, recipient_id: int, entry: dict) -> dict:
        """A raw recipient too large for the queue, as a link: the stored message in the company's own
        storage (``raw_key``, and ``raw_url`` signed for ``RAW_LINK_S``), put there once per message
        (and recorded on it, so the retention purge deletes it); the recipient's ``headers`` go on top
        in the cloud worker. Without such storage the entry stays as it was, with the reason."""
        c = self._raw[recipient_id]
        kind = submissions.cloud_storage(self.company)
        if kind is None or c.smtp_message_id is None:
            return {**entry, "_too_large": "message_too_large: too large for the queue, and the company has no "
                                           "storage of its own (S3, R2) to send it from"}
        key = self._links.get(c.smtp_message_id) or c.storage_key
        try:
            storage = self._storage or open_storage(self.company, kind)
            self._storage = storage
            if key is None:
                if c.raw is None:  # never: only a raw recipient is linked
                    raise PermanentError("the message's MIME is gone")
                key = submissions.link_key(self.company.id, claim.job_id, c.smtp_message_id)
                storage.put(key, c.raw, "message/rfc822")
                submissions.record_link(self.company.id, c.smtp_message_id, key)
            self._links[c.smtp_message_id] = key
            url = storage.presigned_url(key, RAW_LINK_S)
        except ProviderError as exc:
            return {**entry, "_too_large": f"message_too_large: too large for the queue, and not stored for a "
                                           f"link ({exc.reason})"}
        linked: dict[str, Any] = {"email": c.email, "raw_key": key, "raw_url": url, "envelope_from": c.envelope_from}
        if c.headers:
            linked["headers"] = c.headers
        return linked

    def submit(self, items: list[Item]) -> None:
        try:
            transport = get_transport(self.way, self.config)
        except PermanentError as exc:
            self.fail(items, exc.reason)
            return
        try:
            self.submit_with(transport, items)
        finally:
            transport.close()
            if self._storage is not None:
                self._storage.close()

    def submit_with(self, transport, items: list[Item]) -> None:
        built = self.build(items, transport.max_message_bytes)
        if not built:
            return
        handed = [item for item, _ in built]
        self.handing_over(handed)
        try:
            with metrics.Timer(self.redis, self.way):
                answers = transport.submit([message for _, messages in built for message in messages])
        except ConnectionFailure as exc:
            limits.breaker_failure(self.redis, self.company.id, self.way)
            self.to_fallback(handed, exc.reason)
            return
        except EndpointRejected as exc:
            self.pause(handed, exc.reason)
            return
        except PermanentError as exc:
            self.fail(handed, exc.reason)
            return
        except ProviderError as exc:
            if exc.code == "timeout":
                self.maybe_accepted(handed, exc.reason)
            else:  # throttled, 5xx, an HTTPS timeout: the same messages may go later
                self.retry(handed, exc.reason)
            return
        limits.breaker_success(self.redis, self.company.id, self.way)
        outcomes, position = [], 0
        for item, messages in built:
            outcomes.append((item, answers[position:position + len(messages)]))
            position += len(messages)
        self.settle(outcomes)

    def settle(self, outcomes: list[tuple[Item, list]]) -> None:
        """A batch is accepted when any of its messages is: its other messages'
        recipients wait for ``reconcile`` (they may not be sent twice)."""
        accepted, retry = [], []
        for item, answers in outcomes:
            refused = [r for r in answers if not r.ok]
            if len(refused) < len(answers):
                accepted.append(item)
                if refused:
                    settle.log_job_error(item.claim.job_id, f"batch {item.batch_number}: {len(refused)} of "
                                                            f"{len(answers)} messages refused ({refused[0].error}); "
                                                            "their recipients are settled when the batch is "
                                                            "reconciled")
            elif any(r.pause for r in refused):
                self.pause([item], refused[0].error or "the endpoint refused the batch")
            elif all(r.retryable for r in refused):
                retry.append((item, refused[0]))
            else:
                self.fail([item], next(r.error for r in refused if not r.retryable) or "queue refused the message")
        if accepted:
            self.accepted(accepted, {id(item): answers for item, answers in outcomes})
        if retry:
            self.retry([item for item, _ in retry], retry[0][1].error or "queue refused the message")

    def handing_over(self, items: list[Item]) -> None:
        """Record the route before the queue call: a fast worker's callback may
        arrive before the call returns, and settles the batch on that route."""
        ids = [i.claim.batch_id for i in items]
        db.session.execute(update(Batch).where(Batch.id.in_(ids)).values(route=self.route, submitted_at=utcnow()))
        db.session.commit()
        self.handed.update(ids)

    # -- outcomes ---------------------------------------------------------------
    def accepted(self, items: list[Item], answers: dict[int, list] | None = None) -> None:
        now = utcnow()
        for item in items:
            c = item.claim
            if answers:  # what the queue took is billed now, in this transaction
                usage.add(c.company_id, c.job_id, self.queue_usage(item, answers[id(item)]))
            # no change when a callback already settled the batch (done)
            db.session.execute(update(Batch).where(
                Batch.id == c.batch_id, Batch.leased_by == c.worker, Batch.status == B_SUBMITTED).values(
                callback_deadline=now + timedelta(seconds=self.timeout_s), lease_until=None, leased_by=None,
                error=None))
            db.session.execute(text(
                "UPDATE recipients SET attempts = attempts + 1 WHERE job_id = :j AND id BETWEEN :a AND :b "
                f"AND status IN {sql_in(RECIPIENT_CLAIMABLE)}"), {"j": c.job_id, "a": c.first_id, "b": c.last_id})
        db.session.commit()
        for job_id in {i.claim.job_id for i in items}:
            claims.mark_started(job_id)
        log.info("Company %s: %s batches submitted to %s", self.company.id, len(items), self.route)
        self.outcome["submitted"] += len(items)

    def queue_usage(self, item: Item, answers: list) -> dict[str, float]:
        """What the queue call used for one batch (``core.usage``): its messages' 64 KB chunks (SQS
        bills each for the send, and for the Lambda's receive and delete; a Cloudflare Queue three
        operations), a POST through API Gateway, and the attachments' bytes the worker will send."""
        took = [usage.chunks(a.size) for a in answers if a.ok]
        provider = self.config.get("provider")
        used: dict[str, float] = {}
        if self.transport == "sqs":
            used = {"sqs:requests": sum(took), "sqs:chunks": sum(took)}
        elif self.transport == "cloudflare_queue":
            used = {"queue:chunks": sum(took)}
        elif self.transport == "https" and provider and usage.WORKER_OF.get(provider) == "lambda":
            used = {"gateway:requests": len(took)}
        if provider in usage.PROVIDERS and item.attached:
            used[f"attachment_bytes:{provider}"] = item.attached
        return used

    def maybe_accepted(self, items: list[Item], reason: str) -> None:
        """The queue did not answer in time: it may hold the messages. Submitting
        again could send twice, so wait for the callbacks; ``reconcile`` settles
        what never comes by the company's uncertain policy."""
        for item in items:
            settle.log_job_error(item.claim.job_id, f"batch {item.batch_number}: {reason}; the queue may have it, "
                                                    "waiting for its callback")
        self.accepted(items)

    def retry(self, items: list[Item], reason: str) -> None:
        """Back to ``retry`` with back-off; after OFFLOAD_MAX_ATTEMPTS the recipients fail."""
        spent = [i for i in items if i.claim.attempts >= self.max_attempts]
        if spent:
            self.fail(spent, f"gave up after {self.max_attempts} attempts: {reason}")
        again = [i for i in items if i.claim.attempts < self.max_attempts]
        if not again:
            return
        delay = settle.backoff(max(i.claim.attempts for i in again))
        when = utcnow() + timedelta(seconds=delay)
        for item in again:
            claims.release(item.claim, B_RETRY, next_attempt_at=when, error=reason)
            log.warning("Batch %s: submission failed (%s); retrying in %.0f s", item.claim.batch_id, reason, delay)
        queue.enqueue_submit([i.claim.batch_id for i in again], delay=delay)
        self.outcome["retry"] += len(again)

    def fail(self, items: list[Item], reason: str) -> None:
        for item in items:
            settle.fail_remaining(item.claim, reason)
            settle.log_job_error(item.claim.job_id, f"batch {item.batch_number}: {reason}")
            self.finish(item, B_FAILED, error=reason)

    def finish(self, item: Item, status: str, error: str | None = None) -> None:
        claims.release(item.claim, status, error=error)
        settle.finish_job(item.claim.job_id)
        self.outcome[status] += 1

    def to_fallback(self, items: list[Item], reason: str) -> dict[str, int]:
        """The queue is unreachable: the SMTP fallback, else retry later."""
        fallback = routing.fallback_route(self.config, self.global_fallback, bool(self.company.fallback_relay))
        if fallback is None:
            self.retry(items, reason)
            return self.outcome
        for item in items:
            settle.log_job_error(item.claim.job_id, f"batch {item.batch_number}: {reason}; using {fallback.label}")
            claims.release(item.claim, B_QUEUED, route=fallback.label)
            queue.enqueue_fallback(item.claim.batch_id, item.claim.attempts)
        self.outcome["fallback"] += len(items)
        return self.outcome


def submit_batches(batch_ids: list[int]) -> dict[str, int]:
    """Submit up to ten batches to their companies' cloud queues.

    Safe to run twice: the claim decides who submits. Returns counts only.
    """
    cfg = settings.current()
    worker = worker_name()
    taken = [c for c in (claims.claim_submit(int(bid), worker, cfg.lease_s, cfg.callback_timeout_s)
                         for bid in batch_ids) if c]
    by_company: dict[int, list[Claim]] = defaultdict(list)
    for claim in taken:
        by_company[claim.company_id].append(claim)
    outcome: dict[str, int] = defaultdict(int)
    for company_id, group in by_company.items():
        submission = None
        try:
            submission = Submission(company_id, group)
            done = submission.run()
        except Exception:
            db.session.rollback()
            handed = submission.handed if submission is not None else set()
            for claim in group:
                # a batch that reached the queue call stays submitted: reconcile settles it at its
                # deadline; the others may go again soon. The exception is raised again.
                if claim.batch_id not in handed:
                    claims.release(claim, B_RETRY, next_attempt_at=utcnow() + timedelta(seconds=5),
                                   error="worker error; retrying")
            raise
        for key, count in done.items():
            outcome[key] += count
    outcome["skipped"] = len(batch_ids) - len(taken)
    return dict(outcome)


# --------------------------------------------------------------------------- SMTP fallback

class FallbackRun(BatchRun):
    """``BatchRun`` on the SMTP fallback route only; a retry goes back through
    ``submit_batches``, which tries the cloud queue first again."""

    def first_route(self) -> Route | None:
        return self.fallback()

    def requeue(self, delay: float) -> None:
        queue.enqueue_submit([self.claim.batch_id], delay=delay)


def send_fallback(batch_id: int) -> str:
    """Send one offload batch through the SMTP fallback (route ``fallback:smtp``)."""
    return run_claimed(batch_id, FallbackRun)
