"""Cache invalidation between the serving processes of one node on SQLite.

``vault serve --processes N`` runs N processes on the same SQLite files. A token revoked
or a key destroyed through one of them must leave the others' caches at once, and SQLite
has no ``NOTIFY``. Each process binds a unix datagram socket, ``<slot>.sock``, in a
private folder the parent made (0700, so no other user can send to or read from it);
a change this process announces is delivered here and sent to every other socket in
the folder, as one datagram ``channel\\npayload``. Payloads are ids (the channels'
contract), never a secret.

A datagram to a sibling that is gone (restarting) is dropped: its caches start empty. One
to a sibling whose queue is full (stuck) is dropped and logged: its caches still expire
within :data:`vault.db.notify.LOCAL_BOUND`. On PostgreSQL ``NOTIFY`` reaches every process
already, so this is for SQLite only.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from contextlib import suppress
from pathlib import Path

from vault.db.notify import _CHANNEL, Notifier

log = logging.getLogger("vault.notify")

#: the largest datagram read (a payload is at most 1000 bytes, a channel 56)
_DATAGRAM = 2048


class SiblingNotifier(Notifier):
    def __init__(self, folder: Path, name: str) -> None:
        super().__init__()
        self._folder = folder
        self._path = folder / f"{name or 'solo'}.sock"
        self._sock: socket.socket | None = None
        self.heard = 0  # datagrams delivered from siblings, for tests

    async def start(self) -> None:
        if self._sock is not None:
            return
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.setblocking(False)
        with suppress(FileNotFoundError):
            self._path.unlink()  # the socket of this slot's previous process
        sock.bind(str(self._path))
        self._sock = sock
        asyncio.get_running_loop().add_reader(sock.fileno(), self._on_readable)

    async def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is None:
            return
        with suppress(RuntimeError):  # the loop may be closing
            asyncio.get_running_loop().remove_reader(sock.fileno())
        sock.close()
        with suppress(FileNotFoundError):
            self._path.unlink()

    def announce(self, channel: str, payload: str) -> None:
        self.deliver(channel, payload)
        if self._sock is None:
            return
        datagram = f"{channel}\n{payload}".encode()
        for sibling in sorted(self._folder.glob("*.sock")):
            if sibling == self._path:
                continue
            try:
                self._sock.sendto(datagram, str(sibling))
            except (FileNotFoundError, ConnectionRefusedError):
                continue  # gone or restarting: a new process starts with empty caches
            except OSError as exc:  # a full queue (a stuck sibling): its caches expire within LOCAL_BOUND
                log.warning("could not announce a change to a sibling process",
                            extra={"channel": channel, "reason": type(exc).__name__})

    def _on_readable(self) -> None:
        while self._sock is not None:
            try:
                datagram = self._sock.recv(_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            channel, _, payload = datagram.decode("utf-8", "replace").partition("\n")
            if _CHANNEL.match(channel):
                self.heard += 1
                self.deliver(channel, payload)
