"""Group commit: writer threads store the messages of every session, many per transaction.

A session hands its message to ``GroupWriter.store`` and waits. A writer
takes whatever is queued (up to ``MAX_BATCH``), inserts it all and commits
once (one round trip: ``core.submissions.store``), so one fsync covers every
message that arrived meanwhile; then it answers each session at once (one
wake-up of the event loop per batch). There are ``WRITERS`` of them, each
with its own connection: a message that arrives while one is waiting for its
commit goes out on another at once instead of waiting for that commit to end
(each SMTP client waits for its 250, so a group is small, and the wait for
the group before would otherwise be half of a message's latency). A failed commit fails every message of its batch
(``StoreFailed``: the session answers ``451``, nothing was stored; an error
of a kind not foreseen is answered so too, and the writer goes on: a session
never waits for an answer that will not come); while
more than ``MAX_BACKLOG`` messages wait, new ones are refused at once
(``Busy``: ``451`` too) instead of piling up in memory.
"""
from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time

from sqlalchemy.exc import SQLAlchemyError

from core import submissions
from core.db import db

log = logging.getLogger(__name__)

MAX_BATCH = 500
WRITERS = 2
MAX_BACKLOG = 5000
_STOP = object()


class StoreFailed(Exception):
    """The database did not take the batch; nothing of it was stored."""


class Busy(StoreFailed):
    """Too many messages wait for the database already."""


class GroupWriter:
    """The writer thread and the queue in front of it."""

    def __init__(self, loop: asyncio.AbstractEventLoop, *, max_batch: int = MAX_BATCH,
                 max_backlog: int = MAX_BACKLOG, writers: int = WRITERS):
        self.loop = loop
        self.max_batch, self.max_backlog = max_batch, max_backlog
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._waiting = 0
        self._threads = [threading.Thread(target=self._run, name=f"smtp-writer-{n}", daemon=True)
                         for n in range(writers)]
        self._closers = submissions.Closers()
        self._closers_lock = threading.Lock()
        self._counts_lock = threading.Lock()
        #: commits made and messages stored (for the log and the bench)
        self.commits = 0
        self.stored = 0
        self.store_s = 0.0

    def start(self) -> GroupWriter:
        for thread in self._threads:
            thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._queue.put(_STOP)  # each writer puts it back for the next
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    async def store(self, message: submissions.Taken) -> int:
        """Store ``message`` durably; its id once committed. Raises ``StoreFailed`` (or ``Busy``)."""
        if self._waiting >= self.max_backlog:
            raise Busy("backlog full")
        future = self.loop.create_future()
        self._waiting += 1
        try:
            self._queue.put((message, future))
            return await future
        finally:
            self._waiting -= 1

    # -- the thread --------------------------------------------------------------------
    def _run(self) -> None:
        connection = _Connection()
        while True:
            first = self._queue.get()
            if first is _STOP:
                self._queue.put(_STOP)
                connection.drop()
                return
            batch = [first]
            while len(batch) < self.max_batch:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:
                    self._queue.put(_STOP)
                    break
                batch.append(item)
            self._write(batch, connection)

    def _write(self, batch: list, connection: _Connection) -> None:
        messages = [message for message, _ in batch]
        futures = [future for _, future in batch]
        started = time.perf_counter()
        try:
            ids = connection.store(messages)
        except (SQLAlchemyError, OSError, submissions.NotStored, db.engine.dialect.loaded_dbapi.Error) as exc:
            connection.drop()
            log.warning("SMTP: %s messages not stored (%s); answered 451", len(batch), type(exc).__name__)
            self.loop.call_soon_threadsafe(_fail_all, futures)
            return
        except Exception as exc:  # anything else: the sessions still get their answer and the writer lives on
            connection.drop()
            log.error("SMTP: %s messages not stored, unexpected %s; answered 451", len(batch), type(exc).__name__)
            self.loop.call_soon_threadsafe(_fail_all, futures)
            return
        self.loop.call_soon_threadsafe(_answer_all, futures, ids)
        took = time.perf_counter() - started
        with self._counts_lock:
            self.commits += 1
            self.stored += len(ids)
            self.store_s += took
        log.debug("SMTP: %s messages stored in %.1f ms", len(ids), took * 1000)
        try:
            with self._closers_lock:
                self._closers.after_commit(submissions.windows_touched(messages))
        except Exception:  # stored is stored: the sweep closes the windows of closers never scheduled
            log.exception("SMTP: window closers not scheduled")


class _Connection:
    """One writer's database connection, kept from one group to the next."""

    def __init__(self) -> None:
        self._conn = None

    def store(self, messages: list) -> list[int]:
        """Store on the writer's connection; one that broke since its last use (the database restarted)
        is replaced and the insert tried once more, as nothing of it was stored."""
        if self._conn is not None and submissions.connection_lost(self._conn, db.engine.dialect):
            self.drop()
        reused = self._conn is not None
        if self._conn is None:
            self._conn = db.engine.raw_connection()
        try:
            return submissions.store(messages, self._conn, db.engine.dialect)
        except submissions.NotStored:
            if not reused:
                raise
            self.drop()
            self._conn = db.engine.raw_connection()
            return submissions.store(messages, self._conn, db.engine.dialect)

    def drop(self) -> None:
        """Give the connection back (invalidated: after a failure it may be broken)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.invalidate()


def _answer_all(futures: list, ids: list[int]) -> None:
    for future, message_id in zip(futures, ids, strict=True):
        if not future.done():
            future.set_result(message_id)


def _fail_all(futures: list) -> None:
    for future in futures:
        if not future.done():
            future.set_exception(StoreFailed("the database did not take the message"))
