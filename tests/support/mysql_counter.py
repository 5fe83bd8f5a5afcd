"""A TCP proxy in front of MariaDB that counts what its clients ask: every
command packet of the MySQL client/server protocol (``COM_QUERY`` = one SQL
statement, ``COM_PING``, ...) and every connection. ``bench/lms_takeover.py``
points the connector's ``lms_url`` at it to measure the load the take-over
puts on a Moodle database: every statement counts, SQLAlchemy's own
first-connect queries, ``SET SESSION``, ``COMMIT`` and ``ROLLBACK`` included.

A command packet is the first packet (sequence id 0) a client sends after
the server's last answer; its first payload byte names the command.
"""
from __future__ import annotations

import socket
import threading
from collections import Counter

from tests.support.servers import free_port

COMMANDS = {0x01: "quit", 0x02: "init_db", 0x03: "query", 0x0E: "ping", 0x16: "prepare", 0x17: "execute"}


class MysqlCounter:
    """``127.0.0.1:<port>`` forwarding to ``target`` (host, port); ``counts`` by command, ``connections``."""

    def __init__(self, target: tuple[str, int] = ("127.0.0.1", 3306)):
        self.target = target
        self.port = free_port()
        self.counts: Counter = Counter()
        self.shapes: Counter = Counter()  # each statement's first words (what the counts are made of)
        self.connections = 0
        self.lock = threading.Lock()
        self.listener = socket.create_server(("127.0.0.1", self.port))
        self.stopping = False
        self.thread = threading.Thread(target=self._accept, daemon=True)

    def __enter__(self) -> MysqlCounter:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopping = True
        self.listener.close()

    @property
    def queries(self) -> int:
        return self.counts["query"]

    def reset(self) -> None:
        with self.lock:
            self.counts.clear()
            self.shapes.clear()
            self.connections = 0

    def _accept(self) -> None:
        while not self.stopping:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.target)
            with self.lock:
                self.connections += 1
            threading.Thread(target=self._pipe, args=(server, client, False), daemon=True).start()
            threading.Thread(target=self._pipe, args=(client, server, True), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, from_client: bool) -> None:
        buffer = b""
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
                if from_client:
                    buffer = self._count(buffer + data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                sock.close()

    def _count(self, buffer: bytes) -> bytes:
        """Count the complete packets in ``buffer``; return what is left of an incomplete one."""
        while len(buffer) >= 4:
            length = int.from_bytes(buffer[:3], "little")
            if len(buffer) < 4 + length:
                break
            sequence, payload = buffer[3], buffer[4:4 + length]
            if sequence == 0 and payload:
                with self.lock:
                    self.counts[COMMANDS.get(payload[0], f"0x{payload[0]:02x}")] += 1
                    if payload[0] == 0x03:
                        self.shapes[" ".join(payload[1:200].decode("utf-8", "replace").split()[:4])] += 1
            buffer = buffer[4 + length:]
        return buffer
