"""Group commit for threads: one writer thread stores what many threads hand it, many per transaction.

A caller hands its item to ``GroupCommit.submit`` and waits. The writer takes
whatever is queued (up to ``max_batch``), stores it all with one call of the
``store`` function on its own driver connection (one transaction: one fsync
covers every item that arrived while the previous commit ran) and answers each
caller with its own result. A store that fails fails every item of its group
(``StoreFailed``: nothing of the group was stored, unless the failure was in
the commit itself, which the store function tells apart); while ``max_backlog``
items wait, new ones are refused at once (``Busy``) instead of piling up.

``writers`` threads (2 by default) take groups in turn, each on its own
connection: while one group waits for its commit's flush, the next is sent,
and the database flushes both together (a commit costs a WAL flush, some
milliseconds on a disk, where a round trip costs a tenth of one: one writer
left each request waiting for the commit before its own as well).

The threads start on the first ``submit`` of a process (so a forked web worker
starts its own) and end after ``idle_s`` without work. Their connections are the
engine's, replaced after a failure (a database restart breaks them).
"""
from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Dialect, Engine, PoolProxiedConnection

log = logging.getLogger(__name__)


class StoreFailed(Exception):
    """The database did not take the group; nothing of it was stored."""


class Busy(StoreFailed):
    """Too many items wait for the database already."""


class NotStored(Exception):
    """Raised by a store function when its statements failed before the commit: nothing was stored,
    the group may be tried again on a fresh connection."""


@contextmanager
def autocommit_cursor(driver, dialect: Dialect) -> Iterator[Any]:
    """A cursor of the psycopg connection ``driver`` in autocommit: each statement its own transaction, whose
    answer comes only once its commit is durable (the server commits at the protocol's Sync, before it says it
    is ready; psycopg reads up to then), so a group costs one round trip. An error the server reports (it has
    a SQLSTATE) rolled its statement back: ``NotStored``. A connection lost before the answer may or may not
    have committed: that error is raised as it is. The connection leaves in transaction mode again, as the
    pool (SQLAlchemy) expects it."""
    try:
        driver.autocommit = True
        try:
            with driver.cursor() as cursor:
                yield cursor
        finally:
            if not driver.closed:
                driver.autocommit = False
    except dialect.loaded_dbapi.Error as exc:
        if getattr(exc, "sqlstate", None):
            raise NotStored(type(exc).__name__) from exc
        raise


#: ``store(items, driver_connection, dialect)`` → one result per item, in order; it commits
StoreFunction = Callable[[list, Any, Dialect], list]


class _Waiter:
    __slots__ = ("item", "done", "result", "error")

    def __init__(self, item):
        self.item = item
        self.done = threading.Event()
        self.result = None
        self.error: BaseException | None = None


class GroupCommit:
    """The writer thread and the queue in front of it."""

    def __init__(self, engine: Engine, store: StoreFunction, *, name: str, max_batch: int = 500,
                 max_backlog: int = 5000, idle_s: float = 30.0, after: Callable[[list, list], None] | None = None,
                 before: Callable[[list], list] | None = None, writers: int = 2):
        self.engine, self.store_function, self.name = engine, store, name
        self.writers = writers
        self.max_batch, self.max_backlog, self.idle_s = max_batch, max_backlog, idle_s
        #: called in the writer thread after each stored group, with its items and results (may change the
        #: results; an exception is logged and the stored results stand)
        self.after = after
        #: called in the writer thread once per group before it is stored, with its items: one entry per item,
        #: ``None`` to store it, else its answer (an exception is raised to its caller), the item not stored;
        #: an exception of its own is logged and every item is stored
        self.before = before
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._waiting = 0
        self._threads: list[threading.Thread] = []
        self._pid = 0
        #: groups committed, items stored, seconds spent storing (the bench and the log read them)
        self.commits = 0
        self.stored = 0
        self.store_s = 0.0

    # -- callers ---------------------------------------------------------------------------
    def submit(self, item, timeout: float = 30.0):
        """Store ``item``; its result once committed. Raises ``StoreFailed`` (``Busy``), or
        ``TimeoutError`` when no answer came in ``timeout`` seconds (it may still be stored)."""
        waiter = _Waiter(item)
        with self._lock:
            if self._waiting >= self.max_backlog:
                raise Busy("backlog full")
            self._waiting += 1
            self._ensure_thread()
            self._queue.put(waiter)
        try:
            if not waiter.done.wait(timeout):
                raise TimeoutError(f"{self.name}: no answer within {timeout} s")
        finally:
            with self._lock:
                self._waiting -= 1
        if waiter.error is not None:
            raise waiter.error
        return waiter.result

    def _ensure_thread(self) -> None:
        """Start the writers this process lacks (first use, after a fork, after idling); under ``_lock``."""
        if self._pid != os.getpid():  # a forked child: the parent's queue and threads are not ours
            self._queue, self._threads, self._waiting = queue.SimpleQueue(), [], 1
            self._pid = os.getpid()
        self._threads = [t for t in self._threads if t.is_alive()]
        while len(self._threads) < self.writers:
            thread = threading.Thread(target=self._run, name=f"{self.name}-{len(self._threads)}", daemon=True)
            self._threads.append(thread)
            thread.start()

    # -- the threads ----------------------------------------------------------------------------
    def _run(self) -> None:
        slot = _Slot()
        try:
            while True:
                try:
                    first = self._queue.get(timeout=self.idle_s)
                except queue.Empty:
                    with self._lock:  # end only with nothing queued: a submit now starts a new thread
                        if self._queue.empty():
                            self._threads = [t for t in self._threads if t is not threading.current_thread()]
                            return
                    continue
                group = [first]
                while len(group) < self.max_batch:
                    try:
                        group.append(self._queue.get_nowait())
                    except queue.Empty:
                        break
                self._write(group, slot)
        finally:
            slot.drop(self.name)

    def _write(self, group: list[_Waiter], slot: _Slot | None = None) -> None:
        slot = slot if slot is not None else _Slot()
        answered: list = [None] * len(group)
        if self.before is not None:
            try:
                answered = self.before([w.item for w in group])
            except Exception:  # noqa: BLE001 - what runs before only refuses; failing, it refuses nothing
                log.exception("%s: before-store step failed", self.name)
                answered = [None] * len(group)
            for waiter, answer in zip(group, answered, strict=True):
                if answer is not None:
                    waiter.error = answer if isinstance(answer, BaseException) else None
                    waiter.result = None if isinstance(answer, BaseException) else answer
                    waiter.done.set()
            group = [w for w, answer in zip(group, answered, strict=True) if answer is None]
            if not group:
                return
        items = [w.item for w in group]
        started = time.perf_counter()
        try:
            results = self._store(items, slot)
        except Exception as exc:  # noqa: BLE001 - whatever broke, every caller of the group is answered
            slot.drop(self.name)
            log.warning("%s: %s items not stored (%s)", self.name, len(group), type(exc).__name__)
            failure = StoreFailed("the database did not take the group")
            for waiter in group:
                waiter.error = failure
                waiter.done.set()
            return
        self.commits += 1
        self.stored += len(items)
        self.store_s += time.perf_counter() - started
        if self.after is not None:
            try:
                self.after(items, results)
            except Exception:  # stored is stored; what runs after is recovered by the sweep
                log.exception("%s: after-commit step failed", self.name)
        for waiter, result in zip(group, results, strict=True):
            if isinstance(result, BaseException):
                waiter.error = result
            else:
                waiter.result = result
            waiter.done.set()

    def _store(self, items: list, slot: _Slot) -> list:
        """Store on the writer's connection; one that broke since its last use (the database restarted)
        is replaced and the group tried once more, as nothing of it was stored."""
        reused = slot.conn is not None
        if slot.conn is None:
            slot.conn = self.engine.raw_connection()
        try:
            return self.store_function(items, slot.conn, self.engine.dialect)
        except NotStored:
            if not reused:
                raise
            slot.drop(self.name)
            slot.conn = self.engine.raw_connection()
            return self.store_function(items, slot.conn, self.engine.dialect)


class _Slot:
    """One writer thread's connection."""

    __slots__ = ("conn",)

    def __init__(self):
        self.conn: PoolProxiedConnection | None = None

    def drop(self, name: str) -> None:
        """Give the connection back (invalidated: after a failure it may be broken)."""
        conn, self.conn = self.conn, None
        if conn is not None:
            try:
                conn.invalidate()
            except Exception:  # noqa: BLE001 - a broken connection may fail to close too
                log.debug("%s: connection invalidate failed", name, exc_info=True)
