"""One audit writer per node, for ``vault serve --processes N`` (vault.http.processes).

Every read appends to its clinic's one hash chain. With a writer per serving process, the
processes' writers meet on the clinic's head: on PostgreSQL each one's remembered head is
stale whenever another wrote last (its one-statement commit misses and it takes the
locking path), on SQLite they take turns on the lock file. So the node runs one more
process, the **audit writer** (``vault serve --audit-writer``, started and restarted by
the supervisor like a serving process), which owns the node's one real
:class:`~vault.audit.writer.BatchWriter` and listens on ``audit.sock`` in the node's
private runtime folder (0700: no other user can connect).

Each serving process keeps its own group commit (:class:`~vault.audit.service.AuditLog`)
but hands each batch to :class:`RemoteBatchWriter`: one frame, then it waits for the
writer's one-byte answer. The writer gathers the frames of every connection that arrived
while a commit was in flight into its next commit (held briefly for the processes it just
answered, as AuditLog holds its own: both are :class:`~vault.audit.groupcommit.GroupCommit`)
and answers each frame once that commit is durable.

- A frame is a 4-byte big-endian length and compact JSON: a list of
  ``[tenant_id, actor, role, action, request_id, outcome, {targets}]``, every value a
  string. The writer checks the shape and refuses anything else (the connection is
  closed); it never logs an entry's contents.
- The answer is :data:`ACK_COMMITTED` or :data:`ACK_FAILED` (the commit failed: nothing
  of it is claimed written), in frame order.
- An unreachable writer (restarting) or a connection lost mid-batch raise
  :class:`AuditWriterUnavailable`: the batch's reads answer 503 ``audit_unavailable`` with
  ``Retry-After: 1``; a commit the writer reports failed raises :class:`AuditWriterError`
  (500, as when a group commit fails in a single process). Never a 200 without its entry;
  the next batch connects again. A batch
  is retried on a new connection only when the old one was seen closed before anything
  was sent; after sending, whether it committed is unknown.
- On SIGTERM the writer stops accepting connections, commits what it holds, answers it
  and exits. The supervisor stops it only after every serving process has drained and
  flushed its last entries.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import struct
from collections.abc import Callable, Sequence
from contextlib import suppress
from pathlib import Path

from vault import errors
from vault.audit.groupcommit import GroupCommit
from vault.audit.service import AuditEvent
from vault.audit.writer import BatchWriter, batch_writer_for

log = logging.getLogger("vault.audit")

#: the writer's socket, in the node's private runtime folder
SOCKET_NAME = "audit.sock"
_LENGTH = struct.Struct("!I")
#: the largest frame the writer reads (a batch of ~100,000 entries)
MAX_FRAME = 64 << 20
ACK_COMMITTED, ACK_FAILED = b"\x00", b"\x01"
_FIELDS = 6  # the string fields of an entry, before its targets
_ENCODER = json.JSONEncoder(separators=(",", ":"))


class AuditWriterError(Exception):
    """The node's audit writer did not confirm the batch: its reads must fail. Not a
    ``ConnectionError`` on purpose: the HTTP layer takes those for a client that left."""


class AuditWriterUnavailable(errors.AuditUnavailable, AuditWriterError):
    """The writer was not there (restarting) or went away mid-batch: the reads answer 503
    with ``Retry-After``; a writer that answered that its commit failed is a 500."""


class FrameError(ValueError):
    """A frame that is not a list of audit entries (the message names no content)."""


def encode(events: Sequence[AuditEvent]) -> bytes:
    """One frame: the length, then the entries as compact JSON."""
    payload = _ENCODER.encode([[e.tenant_id, e.actor, e.role, e.action, e.request_id, e.outcome, e.targets]
                               for e in events]).encode()
    if len(payload) > MAX_FRAME:
        raise FrameError("a batch larger than a frame")
    return _LENGTH.pack(len(payload)) + payload


def decode(payload: bytes) -> list[AuditEvent]:
    """A frame's entries; :class:`FrameError` for anything but the exact shape."""
    try:
        items = json.loads(payload)
    except (ValueError, RecursionError):
        raise FrameError("not JSON") from None
    if not isinstance(items, list):
        raise FrameError("not a list of entries")
    events = []
    for item in items:
        if type(item) is not list or len(item) != _FIELDS + 1:
            raise FrameError("an entry of the wrong shape")
        tenant_id, actor, role, action, request_id, outcome, targets = item
        # (JSON object keys are always strings)
        if not (type(tenant_id) is str and type(actor) is str and type(role) is str and type(action) is str
                and type(request_id) is str and type(outcome) is str and type(targets) is dict):
            raise FrameError("an entry of the wrong shape")
        for value in targets.values():
            if type(value) is not str:
                raise FrameError("an entry of the wrong shape")
        events.append(AuditEvent(tenant_id=tenant_id, actor=actor, role=role, action=action, request_id=request_id,
                                 outcome=outcome, targets=targets))
    return events


# -- the serving processes' side ---------------------------------------------------------
class RemoteBatchWriter:
    """A :class:`~vault.audit.writer.BatchWriter` that has the node's audit writer commit
    each batch: one connection, one batch in flight at a time."""

    #: commits are counted by the writer process (its metrics reach the node's /metrics)
    remote = True

    def __init__(self, path: Path) -> None:
        self._path = path
        self._lock = asyncio.Lock()
        self._stream: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        stream = self._stream
        if stream is not None and (stream[0].at_eof() or stream[1].is_closing()):
            self._drop()  # the writer went away (restarted) since the last batch: nothing was sent yet
            stream = None
        if stream is None:
            try:
                stream = self._stream = await asyncio.open_unix_connection(str(self._path))
            except OSError as exc:
                raise AuditWriterUnavailable("the node's audit writer is not reachable") from exc
        return stream

    async def write(self, events: Sequence[AuditEvent]) -> None:
        frame = encode(events)
        async with self._lock:
            reader, writer = await self._connect()
            try:
                writer.write(frame)
                await writer.drain()
                ack = await reader.readexactly(1)
            except BaseException as exc:  # cancelled too: an answer would be left unread on this connection
                self._drop()
                if isinstance(exc, (OSError, asyncio.IncompleteReadError)):
                    raise AuditWriterUnavailable("the connection to the node's audit writer was lost") from exc
                raise
        if ack != ACK_COMMITTED:
            raise AuditWriterError("the node's audit writer could not commit the batch")

    def _drop(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            stream[1].close()

    async def close(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            stream[1].close()
            with suppress(OSError):
                await stream[1].wait_closed()


# -- the audit writer process ------------------------------------------------------------
class WriterServer:
    """The group commit of the node: frames in from every connection, one commit, answers out."""

    def __init__(self, batches: BatchWriter) -> None:
        self._batches = batches
        self._stopping = False
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        # Counting frames: each serving process has one batch in flight, so the next commit
        # expects at most one frame per connection.
        self._group: GroupCommit[list[AuditEvent], bool] = GroupCommit(self._commit, most=self._handlers.__len__)
        self.commits = 0  # for tests

    async def start(self, path: Path) -> None:
        path.unlink(missing_ok=True)  # the socket of a previous writer of this node
        self._group.start(name="node audit group commit")
        self._server = await asyncio.start_unix_server(self._serve, str(path))

    async def stop(self) -> None:
        """No new connections; commit and answer what is held; close. Once."""
        if self._stopping:
            return
        if self._server is not None:
            self._server.close()
        self._stopping = True
        await self._group.drain()
        for task in list(self._handlers):
            task.cancel()
        if self._handlers:
            await asyncio.wait(self._handlers)
        await self._batches.close()

    # -- connections ---------------------------------------------------------------------
    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            while True:
                try:
                    (size,) = _LENGTH.unpack(await reader.readexactly(_LENGTH.size))
                    if size > MAX_FRAME:
                        raise FrameError("a frame over the size bound")
                    events = decode(await reader.readexactly(size))
                except asyncio.IncompleteReadError:
                    return  # the serving process closed it (or died)
                except FrameError as exc:
                    log.warning("an audit frame refused; its connection is closed", extra={"reason": str(exc)})
                    return
                if not events:
                    committed = True
                elif self._group.running:
                    committed = await self._group.submit(events)
                else:
                    committed = False  # stopped: nothing more is committed
                writer.write(ACK_COMMITTED if committed else ACK_FAILED)
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass  # its reads learn nothing more: they fail as a lost connection
        finally:
            self._handlers.discard(task)
            writer.close()

    # -- the group commit ----------------------------------------------------------------
    async def _commit(self, frames: list[list[AuditEvent]]) -> bool:
        """One commit of the frames gathered (:class:`GroupCommit`); whether it is durable."""
        from vault.instruments import observe_audit_commit

        events = [event for frame in frames for event in frame]
        try:
            await self._batches.write(events)
        except Exception:  # the frames' reads fail; nothing is claimed written
            log.exception("audit group commit failed", extra={"entries": len(events), "frames": len(frames)})
            return False
        self.commits += 1
        observe_audit_commit(len(events))
        return True


def serve_writer(database_url: str, path: Path, *, on_listening: Callable[[], None] | None = None) -> int:
    """``vault serve --audit-writer``: the node's audit writer process, until SIGTERM/SIGINT."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        server = WriterServer(batch_writer_for(database_url))
        await server.start(path)
        try:
            if on_listening is not None:
                on_listening()
            await stop.wait()
            log.info("audit writer stopping: committing what it holds")
        finally:
            await server.stop()
            path.unlink(missing_ok=True)
        log.info("audit writer stopped")

    asyncio.run(main())
    return 0
