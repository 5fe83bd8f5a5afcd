"""Job, batch and recipient statuses, and the job types.

Each is a ``StrEnum``: a member *is* its string, so it compares, stores and
serialises as the word the API and the database use. The ``*_FINAL`` sets
are the statuses nothing moves out of; the other sets name the groups the
queries share. Raw SQL names statuses through these too: ``sql_in`` writes a
set as an SQL list, a single member goes in with an f-string
(``f"status = '{R_SENDING}'"``), so no status word is spelled twice.
"""
from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum


class JobType(StrEnum):
    CSV_IMPORT = "csv_import"
    LICENSE_ALLOCATION = "license_allocation"
    REENGAGEMENT = "reengagement"
    NOTIFICATION = "notification"
    CERTIFICATE = "certificate"


class Priority(StrEnum):
    """A job's service class (CONTRACT §6): transactional work of any company
    is sent before bulk work; within a class companies share fairly."""

    TRANSACTIONAL = "transactional"
    BULK = "bulk"


#: each job type's default class (``POST /api/v1/jobs`` may set ``"priority"``)
DEFAULT_PRIORITY: dict[str, str] = {
    JobType.CSV_IMPORT: Priority.TRANSACTIONAL,
    JobType.LICENSE_ALLOCATION: Priority.TRANSACTIONAL,
    JobType.NOTIFICATION: Priority.TRANSACTIONAL,
    JobType.CERTIFICATE: Priority.TRANSACTIONAL,
    JobType.REENGAGEMENT: Priority.BULK,
}
PRIORITIES = tuple(Priority)


def is_bulk(job_type: str, priority: str | None) -> bool:
    """Bulk and re-engagement mail: the only mail that carries a one-click unsubscribe and that an
    unsubscribe stops. Everything else is transactional (passwords, accounts, licences, certificates,
    notifications, IOMAD's mail): never unsubscribed; only bounces, complaints and manual entries stop it."""
    return priority == Priority.BULK or job_type == JobType.REENGAGEMENT


class JobStatus(StrEnum):
    PENDING = "pending"
    QUEUED = "queued"
    PROCESSING = "processing"
    COMPLETED = "completed"
    PARTIAL = "partial_failure"
    FAILED = "failed"
    CANCELLED = "cancelled"
    PAUSED = "paused"


class RecipientStatus(StrEnum):
    PENDING = "pending"
    #: claimed and handed (or about to be handed) to a provider
    SENDING = "sending"
    SENT = "sent"
    FAILED = "failed"
    BOUNCED = "bounced"
    SUPPRESSED = "suppressed"
    #: in flight when a worker died: sent or not, nobody knows
    UNCERTAIN = "uncertain"
    CANCELLED = "cancelled"


class BatchStatus(StrEnum):
    PENDING = "pending"
    QUEUED = "queued"
    SENDING = "sending"
    RETRY = "retry"
    SUBMITTED = "submitted"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


JOB_TYPES = tuple(JobType)
JOB_FINAL = frozenset({JobStatus.COMPLETED, JobStatus.PARTIAL, JobStatus.FAILED, JobStatus.CANCELLED})
RECIPIENT_FINAL = frozenset({RecipientStatus.SENT, RecipientStatus.FAILED, RecipientStatus.BOUNCED,
                             RecipientStatus.SUPPRESSED, RecipientStatus.CANCELLED})
BATCH_FINAL = frozenset({BatchStatus.DONE, BatchStatus.FAILED, BatchStatus.CANCELLED})
#: recipients a batch run or a callback may still settle
RECIPIENT_OPEN = frozenset({RecipientStatus.PENDING, RecipientStatus.SENDING, RecipientStatus.UNCERTAIN})
#: recipients a batch run may (still) send: never handed to a provider, or uncertain
RECIPIENT_CLAIMABLE = frozenset({RecipientStatus.PENDING, RecipientStatus.UNCERTAIN})
#: batches waiting for a worker (or for their next attempt)
BATCH_WAITING = frozenset({BatchStatus.PENDING, BatchStatus.QUEUED, BatchStatus.RETRY})
#: planned batches waiting (queued, or backing off): the ones the sweep re-queues when the queue lost them
BATCH_REQUEUABLE = frozenset({BatchStatus.QUEUED, BatchStatus.RETRY})
#: batches not final: waiting, held by a worker (sending) or handed to a cloud worker (submitted)
BATCH_OPEN = frozenset(BatchStatus) - BATCH_FINAL
#: jobs whose batches are being sent (not pending, paused or final)
JOB_RUNNING = frozenset({JobStatus.QUEUED, JobStatus.PROCESSING})

# Short names the sending code reads best with.
PENDING, QUEUED, PROCESSING, COMPLETED, PARTIAL, FAILED, CANCELLED, PAUSED = (
    JobStatus.PENDING, JobStatus.QUEUED, JobStatus.PROCESSING, JobStatus.COMPLETED, JobStatus.PARTIAL,
    JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.PAUSED)
R_PENDING, R_SENDING, R_SENT, R_FAILED, R_BOUNCED, R_SUPPRESSED, R_UNCERTAIN, R_CANCELLED = tuple(RecipientStatus)
B_PENDING, B_QUEUED, B_SENDING, B_RETRY, B_SUBMITTED, B_DONE, B_FAILED, B_CANCELLED = tuple(BatchStatus)


_STATUS_ENUMS = (JobStatus, RecipientStatus, BatchStatus)


def sql_in(statuses: Iterable[JobStatus | RecipientStatus | BatchStatus]) -> str:
    """``statuses`` as an SQL list for raw ``text()`` queries: ``('pending', 'uncertain')``.

    Sorted, so a set gives the same SQL text every time. Only members of the
    status enums are taken (our own constants, never input: the words are
    written into the SQL, not bound); anything else is a ``TypeError``.
    """
    members = sorted(set(statuses))
    if not members:
        raise ValueError("sql_in needs at least one status")
    for status in members:
        if not isinstance(status, _STATUS_ENUMS):
            raise TypeError(f"sql_in takes status enum members, not {status!r}")
    return "(" + ", ".join(f"'{status}'" for status in members) + ")"
