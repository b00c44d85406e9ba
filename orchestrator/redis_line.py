"""One Redis connection a process keeps for the few commands it sends on every step.

redis-py's pool and pipeline machinery (checking a connection out and in, its retry wrapper and its
observability hooks) cost a worker child more CPU than the commands themselves: about 150 µs for a
two-command pipeline against 50 µs on a connection kept open. ``RedisLine`` sends a batch of commands
in one round trip on its own connection, one caller at a time.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from typing import Any

import redis


class RedisLine:
    """Sends batches of commands on one connection of its own; reconnects after a fork or a broken
    connection. Thread-safe (callers take turns)."""

    def __init__(self, client: redis.Redis):
        self.pool = client.connection_pool
        self.lock = threading.Lock()
        self.pid: int | None = None
        self.connection: Any = None

    def send(self, commands: Sequence[tuple]) -> list[Any]:
        """The replies to ``commands``, sent in one round trip. A connection found broken is opened
        again and the batch sent once more (the commands sent here may arrive twice); raises the
        redis error if that fails too. A timeout is not tried again: a server that does not answer
        (frozen, not gone) would only hold the caller, and whoever waits for the line, once more."""
        if not commands:
            return []
        with self.lock:
            try:
                return self._send(commands)
            except redis.ConnectionError:
                self._close()
                return self._send(commands)

    def _send(self, commands: Sequence[tuple]) -> list[Any]:
        if self.pid != os.getpid():  # a forked child must not share its parent's socket
            self.connection, self.pid = self.pool.make_connection(), os.getpid()
        connection = self.connection
        try:
            connection.send_packed_command(connection.pack_commands(commands))
            return [connection.read_response() for _ in commands]
        except BaseException:
            # A reply left unread would answer the next batch's first command.
            self._close()
            raise

    def _close(self) -> None:
        if self.connection is not None and self.pid == os.getpid():
            self.connection.disconnect()
        self.connection = self.pid = None
