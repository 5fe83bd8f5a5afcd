"""Child processes that run untrusted work under limits the kernel enforces.

A template is code written by a tenant. The sandbox (``core.rendering``)
keeps it away from Python's internals and counts its loops, but a single
C-level operation (``str(huge_list)``, a filter that builds a value before
anyone can look at its size) cannot be interrupted from inside the process
that runs it. So untrusted work runs in a pre-started child process:

- **memory**: the child's address space is capped (``RLIMIT_AS``) at what it
  needs at rest plus ``memory_mb``; an allocation past it fails with
  ``MemoryError`` inside the child, which reports it and exits;
- **time**: the parent waits for each answer until the work's deadline plus
  ``GRACE_S`` and then kills the child (``SIGKILL``); the child also carries
  a CPU-time limit (``RLIMIT_CPU``, raised before each request) so it cannot
  outlive a dead parent's deadline;
- **reach**: the child starts from a clean interpreter (``python -m``, no
  inherited file descriptors, an environment without the service's
  variables and secrets) and cannot fork (``RLIMIT_NPROC``), write files
  (``RLIMIT_FSIZE``) or open more than a few (``RLIMIT_NOFILE``).

A ``Pool`` keeps idle children per process (a forked process starts with an
empty pool); one request is one message each way (a whole chunk of
recipients in one message), so the cost is one round trip per call.

Messages are pickles with a 4-byte length. What the child sends is loaded
with an unpickler that resolves no global at all: only plain values (str,
bytes, numbers, tuples, lists, dicts) can come back, whatever the child did.
"""
from __future__ import annotations

import io
import os
import pickle
import resource
import select
import struct
import subprocess
import sys
import threading
import time
from typing import Any

#: seconds past a request's deadline before the child is killed (its own clock stops it first)
GRACE_S = 0.5
#: seconds a new child may take to start (a loaded machine)
SPAWN_TIMEOUT_S = 15.0
#: largest answer the parent reads (bytes)
MAX_MESSAGE = 256 * 1024 * 1024
#: idle children kept per pool and process
MAX_IDLE = 2

_HEADER = struct.Struct("<I")
_READ = 65536  # below malloc's mmap threshold: a read does not map and unmap a buffer
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class ChildTimeout(Exception):
    """The child did not answer before the deadline; it has been killed."""


class ChildGone(Exception):
    """The child exited or broke the protocol (``reason`` says how, in words)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class _PlainUnpickler(pickle.Unpickler):
    """Loads plain values only: no class, function or global can be named."""

    def find_class(self, module, name):  # noqa: ARG002 - the answer never names a global
        raise pickle.UnpicklingError("an answer from a child process may hold plain values only")


def loads_plain(data: bytes) -> Any:
    return _PlainUnpickler(io.BytesIO(data)).load()


def dumps(obj: Any) -> bytes:
    body = pickle.dumps(obj, protocol=5)
    return _HEADER.pack(len(body)) + body


def _child_env() -> dict[str, str]:
    """The child's whole environment: none of the service's variables (no database URL, key or
    credential); where this interpreter finds its libraries is passed as the import path."""
    return {"LC_ALL": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1",
            "PYTHONPATH": os.pathsep.join(p for p in sys.path if p and os.path.isabs(p))}


class Child:
    """One child process speaking the length-prefixed protocol on its stdin and stdout."""

    def __init__(self, module: str, memory_mb: int, spawn_timeout_s: float = SPAWN_TIMEOUT_S):
        self.idle_since = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", module, str(memory_mb)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL, cwd=_ROOT, env=_child_env(), close_fds=True, bufsize=0)
        self.pid = self.proc.pid
        if self.proc.stdin is None or self.proc.stdout is None:  # never: both are pipes
            raise RuntimeError("the child has no pipes")
        self._w = self.proc.stdin.fileno()
        self._r = self.proc.stdout.fileno()
        os.set_blocking(self._r, False)
        self._poller = select.poll()
        self._poller.register(self._r, select.POLLIN | select.POLLHUP | select.POLLERR)
        self._buf = bytearray()
        self.dead = False
        #: what the caller has told this child so far (keys it need not send again)
        self.known: set = set()
        try:
            hello = self.recv(time.monotonic() + spawn_timeout_s)
        except ChildTimeout:
            raise ChildGone("the renderer did not start in time") from None
        if not (isinstance(hello, tuple) and hello[:1] == ("ready",)):
            self.kill()
            raise ChildGone("the renderer did not start")

    def send(self, obj: Any) -> None:
        data = memoryview(dumps(obj))
        try:
            while data:
                data = data[os.write(self._w, data):]
        except OSError:
            self.kill()
            raise ChildGone("the renderer stopped") from None

    def recv(self, deadline: float) -> Any:
        """The next message, waiting until ``deadline`` (monotonic); kills the child after it."""
        while True:
            if len(self._buf) >= _HEADER.size:
                (size,) = _HEADER.unpack_from(self._buf)
                if size > MAX_MESSAGE:
                    self.kill()
                    raise ChildGone("the renderer sent an answer that is too large")
                if len(self._buf) >= _HEADER.size + size:
                    body = bytes(self._buf[_HEADER.size:_HEADER.size + size])
                    del self._buf[:_HEADER.size + size]
                    try:
                        return loads_plain(body)
                    except Exception:  # noqa: BLE001 - whatever the child sent, it is not an answer
                        self.kill()
                        raise ChildGone("the renderer sent an answer that is not plain data") from None
            self._fill(deadline)

    def _fill(self, deadline: float) -> None:
        # read first: an answer usually waits already (poll only when it does not)
        try:
            chunk = os.read(self._r, _READ)
        except BlockingIOError:
            chunk = None
        except OSError:
            chunk = b""
        if chunk is None:
            left = deadline - time.monotonic()
            if left <= 0:
                self.kill()
                raise ChildTimeout()
            if not self._poller.poll(max(1, int(left * 1000) + 1)):
                if time.monotonic() >= deadline:
                    self.kill()
                    raise ChildTimeout()
                return
            try:
                chunk = os.read(self._r, _READ)
            except BlockingIOError:
                return
            except OSError:
                chunk = b""
        if not chunk:
            code = self.kill()
            raise ChildGone(_exit_words(code))
        self._buf += chunk

    def alive(self) -> bool:
        return not self.dead and self.proc.poll() is None

    def kill(self) -> int | None:
        """Kill and reap the child (idempotent); its exit code, negative for a signal."""
        if not self.dead:
            self.dead = True
            try:
                self.proc.kill()
            except OSError:
                pass
            for stream in (self.proc.stdin, self.proc.stdout):
                try:
                    if stream is not None:
                        stream.close()
                except OSError:
                    pass
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:  # a kill is never ignored; the zombie is reaped later
                pass
        return self.proc.returncode

    def forget(self) -> None:
        """In a forked process: drop the parent's child without touching it."""
        self.dead = True
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                if stream is not None:
                    stream.close()
            except OSError:
                pass


def _exit_words(code: int | None) -> str:
    if code is not None and code < 0:
        return f"the renderer was stopped by signal {-code}"
    return "the renderer stopped"


class Pool:
    """Idle children of one kind (one ``module``), per process, shared by threads. With ``idle_s``,
    a child left idle that long is stopped (a heavy kind should not sit in every process)."""

    def __init__(self, module: str, memory_mb: int, spawn_timeout_s: float = SPAWN_TIMEOUT_S,
                 idle_s: float | None = None):
        self.module = module
        self.memory_mb = memory_mb
        self.spawn_timeout_s = spawn_timeout_s
        self.idle_s = idle_s
        self._idle: list[Child] = []
        self._lock = threading.Lock()
        self._reaper: threading.Thread | None = None
        self.spawned = 0  # children started by this process (the bench and tests read it)
        self.taken = 0  # requests handed to children
        os.register_at_fork(after_in_child=self._after_fork)

    def _after_fork(self) -> None:
        for child in self._idle:
            child.forget()
        self._idle = []
        self._lock = threading.Lock()
        self._reaper = None

    def take(self) -> Child:
        """An idle child, or a new one (``ChildGone`` when it cannot start)."""
        self.taken += 1
        with self._lock:
            while self._idle:
                child = self._idle.pop()
                if child.alive():
                    return child
                child.kill()
        self.spawned += 1
        return Child(self.module, self.memory_mb, self.spawn_timeout_s)

    def give(self, child: Child) -> None:
        """Back to the pool after a request it answered in full (``take`` checks it still lives)."""
        if child.dead:
            return
        child.idle_since = time.monotonic()
        with self._lock:
            if len(self._idle) < MAX_IDLE:
                self._idle.append(child)
                if self.idle_s is not None and self._reaper is None:
                    self._reaper = threading.Thread(target=self._reap, name=f"{self.module} reaper", daemon=True)
                    self._reaper.start()
                return
        child.kill()

    def _reap(self) -> None:
        idle_s = self.idle_s
        if idle_s is None:  # never: the reaper starts only when children may idle out
            return
        while True:
            time.sleep(idle_s / 4)
            with self._lock:
                now = time.monotonic()
                stale = [c for c in self._idle if now - c.idle_since > idle_s]
                self._idle = [c for c in self._idle if c not in stale]
            for child in stale:
                child.kill()

    def idle_pids(self) -> list[int]:
        """The process ids of the idle children (the tests watch them being stopped)."""
        with self._lock:
            return [child.pid for child in self._idle if not child.dead]

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for child in idle:
            child.kill()


# ---------------------------------------------------------------------------- the child's side


def child_limits(memory_mb: int, files: int = 16) -> None:
    """Called by a child once its imports are done: cap what one request may take (``files``: open
    descriptors; a child that reads font files as it lays out needs more than the protocol's)."""
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))
    resource.setrlimit(resource.RLIMIT_NPROC, (0, 0))
    resource.setrlimit(resource.RLIMIT_NOFILE, (files, files))
    base = _address_space()
    limit = base + memory_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


_cpu_soft = [0]


def cpu_allowance(seconds: float) -> None:
    """Let this request use at most about ``seconds`` more CPU time: past the limit the kernel ends
    the process (SIGXCPU), whether or not its parent is still there to kill it. The limit is moved
    only when it is too close or more than 10 s too far (syscalls saved on most requests)."""
    used = time.process_time()
    low, high = used + seconds, used + seconds + 10
    if low <= _cpu_soft[0] <= high:
        return
    soft = int(low) + 1
    _, hard = resource.getrlimit(resource.RLIMIT_CPU)
    if hard != resource.RLIM_INFINITY:
        soft = min(soft, hard)
    resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))
    _cpu_soft[0] = soft


def _address_space() -> int:
    with open("/proc/self/statm") as fh:
        pages = int(fh.read().split()[0])
    return pages * os.sysconf("SC_PAGE_SIZE")


class ChildChannel:
    """The child's end: blocking reads of the parent's requests on stdin, answers on stdout."""

    def __init__(self) -> None:
        # the protocol gets its own descriptors; 0 and 1 become /dev/null, so nothing a library
        # prints can corrupt an answer
        self._r, self._w = os.dup(0), os.dup(1)
        null = os.open(os.devnull, os.O_RDWR)
        os.dup2(null, 0)
        os.dup2(null, 1)
        os.close(null)
        self._buf = bytearray()

    def recv(self) -> Any | None:
        """The next request, ``None`` once the parent has gone (end of input)."""
        while True:
            if len(self._buf) >= _HEADER.size:
                (size,) = _HEADER.unpack_from(self._buf)
                if len(self._buf) >= _HEADER.size + size:
                    body = bytes(self._buf[_HEADER.size:_HEADER.size + size])
                    del self._buf[:_HEADER.size + size]
                    return pickle.loads(body)  # the parent is trusted
            chunk = os.read(self._r, _READ)
            if not chunk:
                return None
            self._buf += chunk

    def send(self, obj: Any) -> None:
        data = memoryview(dumps(obj))
        while data:
            data = data[os.write(self._w, data):]
