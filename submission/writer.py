"""Group commit: the messages of every session stored many per transaction, on the event loop.

A session hands its message to ``GroupWriter.store`` and waits. A writer
takes whatever is queued (up to ``MAX_BATCH``), inserts it all and commits
once (one round trip: ``core.submissions.store``), so one fsync covers every
message that arrived meanwhile; then it answers each session. There are
``WRITERS`` of them, each with its own connection: a message that arrives
while one is waiting for its commit goes out on another at once instead of
waiting for that commit to end (each SMTP client waits for its 250, so a
group is small, and the wait for the group before would otherwise be half
of a message's latency).

On PostgreSQL the writers are tasks of the SMTP process's event loop, each on
an asyncio psycopg connection (``core.submissions.store_async``): no thread
between a session and the database. Writer threads (as ``core.groupcommit``
has for the web app's threads) waited for the loop's GIL at every step of
their query and again to hand the answers back: 1.4 ms a group where the
database itself takes 0.3. On SQLite, whose driver has no asyncio side, one
writer stores on a thread of its own (SQLite takes one writer at a time).

A failed commit fails every message of its batch (``StoreFailed``: the
session answers ``451``, nothing was stored; an error of a kind not foreseen
is answered so too, and the writer goes on: a session never waits for an
answer that will not come); while more than ``MAX_BACKLOG`` messages wait,
new ones are refused at once (``Busy``: ``451`` too) instead of piling up in
memory.
"""
from __future__ import annotations

import asyncio
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor

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
    """The writers and the queue in front of them (made and used on the loop ``loop``)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, *, max_batch: int = MAX_BATCH,
                 max_backlog: int = MAX_BACKLOG, writers: int = WRITERS, connect_args: dict | None = None):
        self.loop = loop
        self.max_batch, self.max_backlog = max_batch, max_backlog
        self.on_loop = db.engine.dialect.driver == "psycopg"
        self.writers = writers if self.on_loop else 1
        #: the driver's options for the writers' own connections (timeouts)
        self.connect_args = connect_args or {}
        self._queue: asyncio.Queue = asyncio.Queue()
        self._waiting = 0
        self._tasks: list[asyncio.Task] = []
        self._thread = None if self.on_loop else ThreadPoolExecutor(max_workers=1, thread_name_prefix="smtp-writer")
        self._closers = submissions.Closers()
        self._closers_lock = threading.Lock()
        #: commits made and messages stored (for the log and the bench)
        self.commits = 0
        self.stored = 0
        self.store_s = 0.0

    def start(self) -> GroupWriter:
        self._tasks = [self.loop.create_task(self._run(), name=f"smtp-writer-{n}") for n in range(self.writers)]
        return self

    async def close(self, timeout: float = 10.0) -> None:
        """Store what is queued, then end the writers and their connections."""
        for _ in self._tasks:
            self._queue.put_nowait(_STOP)
        if self._tasks:
            _done, pending = await asyncio.wait(self._tasks, timeout=timeout)
            for task in pending:
                task.cancel()
        if self._thread is not None:
            self._thread.shutdown(wait=False)

    async def store(self, message: submissions.Taken) -> int:
        """Store ``message`` durably; its id once committed. Raises ``StoreFailed`` (or ``Busy``)."""
        if self._waiting >= self.max_backlog:
            raise Busy("backlog full")
        future = self.loop.create_future()
        self._waiting += 1
        try:
            self._queue.put_nowait((message, future))
            return await future
        finally:
            self._waiting -= 1

    # -- the writers -----------------------------------------------------------------------
    async def _run(self) -> None:
        connection: _AsyncConnection | _Connection = _AsyncConnection(self.connect_args) if self.on_loop \
            else _Connection()
        try:
            while True:
                first = await self._queue.get()
                if first is _STOP:
                    return
                batch, stopping = [first], False
                while len(batch) < self.max_batch and not self._queue.empty():
                    item = self._queue.get_nowait()
                    if item is _STOP:
                        stopping = True
                        break
                    batch.append(item)
                await self._write(batch, connection)
                if stopping:
                    return
        finally:
            await self._drop(connection)

    async def _store(self, connection, messages: list) -> list[int]:
        if isinstance(connection, _AsyncConnection):
            return await connection.store(messages)
        return await self.loop.run_in_executor(self._thread, connection.store, messages)

    async def _drop(self, connection) -> None:
        if isinstance(connection, _AsyncConnection):
            await connection.drop()
        else:
            await self.loop.run_in_executor(self._thread, connection.drop)

    async def _write(self, batch: list, connection) -> None:
        messages = [message for message, _ in batch]
        futures = [future for _, future in batch]
        started = time.perf_counter()
        try:
            ids = await self._store(connection, messages)
        except (SQLAlchemyError, OSError, submissions.NotStored, db.engine.dialect.loaded_dbapi.Error) as exc:
            await self._drop(connection)
            log.warning("SMTP: %s messages not stored (%s); answered 451", len(batch), type(exc).__name__)
            _fail_all(futures)
            return
        except Exception as exc:  # anything else: the sessions still get their answer and the writer lives on
            await self._drop(connection)
            log.error("SMTP: %s messages not stored, unexpected %s; answered 451", len(batch), type(exc).__name__)
            _fail_all(futures)
            return
        _answer_all(futures, ids)
        took = time.perf_counter() - started
        self.commits += 1
        self.stored += len(ids)
        self.store_s += took
        windows = submissions.windows_touched(messages)
        if self._closers.pending(windows):  # Redis is asked once a tick, from a thread: never on the loop
            self.loop.run_in_executor(None, self._schedule_closers, windows)

    def _schedule_closers(self, windows: set) -> None:
        try:
            with self._closers_lock:
                self._closers.after_commit(windows)
        except Exception:  # stored is stored: the sweep closes the windows of closers never scheduled
            log.exception("SMTP: window closers not scheduled")


class _AsyncConnection:
    """One writer's asyncio psycopg connection (autocommit), kept from one group to the next."""

    def __init__(self, connect_args: dict) -> None:
        self._conn = None
        self._connect_args = connect_args

    async def _connect(self):
        engine = db.engine
        args, kwargs = engine.dialect.create_connect_args(engine.url)
        return await engine.dialect.loaded_dbapi.AsyncConnection.connect(
            *args, **{**kwargs, **self._connect_args, "autocommit": True})

    async def store(self, messages: list) -> list[int]:
        """Store on the writer's connection; one that broke since its last use (the database restarted)
        is replaced and the insert tried once more, as nothing of it was stored."""
        dialect = db.engine.dialect
        if self._conn is not None and submissions.driver_lost(self._conn, dialect):
            await self.drop()
        reused = self._conn is not None
        if self._conn is None:
            self._conn = await self._connect()
        try:
            return await submissions.store_async(messages, self._conn, dialect)
        except submissions.NotStored:
            if not reused:
                raise
            await self.drop()
            self._conn = await self._connect()
            return await submissions.store_async(messages, self._conn, dialect)

    async def drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                await conn.close()
            except Exception:  # a broken connection: closing it is all that is left to do
                log.debug("SMTP: closing a writer's connection failed", exc_info=True)


class _Connection:
    """The SQLite writer's connection (SQLAlchemy's pool, on the writer's thread), kept from one group to the next."""

    def __init__(self) -> None:
        self._conn = None

    def store(self, messages: list) -> list[int]:
        """Store on the writer's connection; after an error the database reported on a connection used
        before, the insert is tried once more on a fresh one, as nothing of it was stored."""
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
