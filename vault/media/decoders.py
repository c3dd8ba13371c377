"""The pool of decoder worker processes (the server side of :mod:`vault.pipeline.worker`).

Why not ``ProcessPoolExecutor``: when one of its workers dies, every pending future of the
pool breaks; it pickles (a compromised worker could make the server unpickle anything);
its workers inherit the server's environment; and it cannot kill one item that runs too
long. Here each worker is a separate ``python -I`` started by exec with a clean
environment and only its two pipes: nothing of the server's memory (keys, tokens,
connections) exists in it, whenever it is started. One item at a time per worker; an item
that breaks its worker (crash, wall time, address space) fails alone with
:class:`~vault.errors.DecoderFailed` (422), the worker is replaced, and the other items
go on. Every wait is bounded: for a free worker (else :class:`~vault.errors.DecoderBusy`,
503), for a worker to start, and for each item.

Background items (the full-resolution face search, seconds of CPU each) have workers of
their own (``background_workers``), started at a lower CPU priority (``nice``
:data:`BACKGROUND_NICE`): they never take a worker an upload is waiting for, and while
uploads keep the cores busy the searches yield to them and catch up when uploads pause.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vault import allocator, errors
from vault.pipeline import wire

log = logging.getLogger(__name__)

START_SECONDS = 60.0
_SLICE = 256 * 1024  # the most of a frame handed to the pipe's transport at once (_Worker.send)
BACKGROUND_NICE = 10  # CPU weight ~1/10 of a normal process's (CFS), not starved outright
# What the worker may report; anything else becomes DecoderFailed. Never a class by name
# from the worker: it chooses only among these.
_KINDS: dict[str, type[errors.VaultError]] = {
    cls.__name__: cls
    for cls in (errors.MediaRejected, errors.UnsupportedMedia, errors.TooLarge, errors.PixelLimit, errors.CorruptMedia)
}
_BOOT = "import sys; sys.path.insert(0, sys.argv.pop(1)); from vault.pipeline.worker import main; main()"


@dataclass(frozen=True)
class PoolLimits:
    workers: int
    item_seconds: float
    video_seconds: float
    memory_bytes: int
    recycle_after: int
    queue_seconds: float
    max_queue: int
    background_workers: int = 0  # 0: background items share the upload workers


Read = Callable[[int, int], Awaitable[bytes]]
Write = Callable[[bytes], Awaitable[None]]
Progress = Callable[[dict[str, Any], list[bytes]], None]


class _Worker:
    def __init__(self, proc: asyncio.subprocess.Process, *, background: bool) -> None:
        self.proc = proc
        self.background = background
        self.items = 0
        self.sandbox: dict[str, Any] = {}

    async def send(self, header: dict[str, Any], *parts: bytes) -> None:
        """One frame, in slices of at most :data:`_SLICE` bytes, each written once the pipe
        has taken the one before: what the pipe cannot take at once waits in the
        transport's buffer, so handing it a 5 MB photo whole would copy most of it there
        (and again each time the buffer shrinks)."""
        stdin = self.proc.stdin
        assert stdin is not None
        for piece in wire.encode(header, *parts):
            if len(piece) <= _SLICE:
                stdin.write(piece)
                continue
            view = memoryview(piece)
            for start in range(0, len(view), _SLICE):
                stdin.write(view[start:start + _SLICE])
                await stdin.drain()
        await stdin.drain()

    async def receive(self, *, max_payload: int) -> tuple[dict[str, Any], list[bytes]]:
        stdout = self.proc.stdout
        assert stdout is not None
        json_len, payload_len = wire.decode_head(await stdout.readexactly(wire.HEAD_SIZE), max_payload=max_payload)
        raw = await stdout.readexactly(json_len)
        return wire.decode_body(raw, await stdout.readexactly(payload_len))

    async def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.proc.wait(), 10)
        if self.proc.stdin is not None:
            self.proc.stdin.close()


class DecoderPool:
    def __init__(self, limits: PoolLimits, *, face_model: str | None) -> None:
        self.limits = limits
        self.face_model = face_model
        self._idle: asyncio.Queue[_Worker] = asyncio.Queue()
        self._idle_background: asyncio.Queue[_Worker] = asyncio.Queue()
        self._all: set[_Worker] = set()
        self._spawning: set[asyncio.Task[None]] = set()
        self._waiting = 0
        self._closed = False
        self._warned = False
        self.detector = ""

    # -- life cycle ---------------------------------------------------------------------
    def start(self) -> None:
        """Begin starting every worker (returns at once; items wait for them)."""
        for _ in range(self.limits.workers):
            self._replace(background=False)
        for _ in range(self.limits.background_workers):
            self._replace(background=True)

    def _replace(self, *, background: bool) -> None:
        if self._closed:
            return
        task = asyncio.create_task(self._spawn(background), name="decoder worker start")
        self._spawning.add(task)
        task.add_done_callback(self._spawning.discard)

    async def _spawn(self, background: bool) -> None:
        for attempt in range(5):
            worker = None
            try:
                worker = await self._launch(background)
                header, _ = await asyncio.wait_for(worker.receive(max_payload=0), START_SECONDS)
                if header.get("t") != "ready":
                    raise wire.WireError("unexpected greeting")
            except (OSError, EOFError, asyncio.IncompleteReadError, TimeoutError, wire.WireError) as exc:
                log.error("a decoder worker failed to start", extra={"error": type(exc).__name__})
                if worker is not None:
                    await self._retire(worker)
                await asyncio.sleep(min(30, 0.5 * 2**attempt))
                continue
            worker.sandbox = header.get("sandbox") or {}
            self.detector = str(header.get("detector", ""))[:64]
            self._check_sandbox(worker.sandbox)
            if self._closed:
                await self._retire(worker)
            else:
                self._queue(worker).put_nowait(worker)
            return

    def _queue(self, worker: _Worker) -> asyncio.Queue[_Worker]:
        return self._idle_background if worker.background else self._idle

    async def _launch(self, background: bool) -> _Worker:
        root = str(Path(__file__).resolve().parents[2])
        nice = BACKGROUND_NICE if background else 0
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-I", "-c", _BOOT, root, self.face_model or "", str(self.limits.memory_bytes), str(nice),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
            env=clean_environment(), cwd="/", close_fds=True, start_new_session=True,
            limit=1 << 20,
        )
        worker = _Worker(proc, background=background)
        self._all.add(worker)
        return worker

    def _check_sandbox(self, report: dict[str, Any]) -> None:
        if self._warned or sys.platform != "linux":
            return
        if not report.get("landlock_abi") or not report.get("capabilities_dropped") or report.get("dumpable"):
            self._warned = True
            log.warning("decoder workers run without a full sandbox (see docs/media.md)",
                        extra={"sandbox": {k: v for k, v in report.items() if k != "platform"}})

    async def _retire(self, worker: _Worker) -> None:
        self._all.discard(worker)
        await worker.kill()

    async def close(self) -> None:
        self._closed = True
        for task in list(self._spawning):
            task.cancel()
        await asyncio.gather(*self._spawning, return_exceptions=True)
        await asyncio.gather(*(self._retire(w) for w in list(self._all)), return_exceptions=True)

    # -- items --------------------------------------------------------------------------
    async def _acquire(self, background: bool) -> _Worker:
        if self._closed:
            raise errors.DecoderBusy("the media decoders are shutting down")
        idle = self._idle_background if background and self.limits.background_workers else self._idle
        if self._waiting >= self.limits.max_queue and idle.empty():
            raise errors.DecoderBusy()
        self._waiting += 1
        try:
            return await asyncio.wait_for(idle.get(), self.limits.queue_seconds)
        except TimeoutError:
            raise errors.DecoderBusy() from None
        finally:
            self._waiting -= 1

    async def run(
        self, op: str, header: dict[str, Any], *parts: bytes, read: Read | None = None, write: Write | None = None,
        progress: Progress | None = None, max_result: int = 256 << 20, seconds: float | None = None,
        background: bool = False,
    ) -> tuple[dict[str, Any], list[bytes]]:
        """Run one item on a free worker (a background one when asked and there are any):
        ``read(start, end)`` answers its range requests, ``write(chunk)`` takes its
        streamed output, ``progress(frame, parts)`` its partial results (whatever it
        raises fails the item and retires the worker). Returns its (unchecked) result."""
        worker = await self._acquire(background)
        healthy = False
        try:
            async with asyncio.timeout(seconds or self.limits.item_seconds):
                await worker.send({**header, "op": op}, *parts)
                while True:
                    reply, got = await worker.receive(max_payload=max_result)
                    kind = reply.get("t")
                    if kind == "read" and read is not None:
                        await worker.send({"t": "data"}, await read(int(reply["start"]), int(reply["end"])))
                    elif kind == "write" and write is not None and len(got) == 1:
                        await write(got[0])
                    elif kind == "progress" and progress is not None:
                        progress(reply, got)
                    elif kind == "done" and isinstance(reply.get("result"), dict):
                        healthy = True
                        return reply["result"], got
                    elif kind == "error":
                        healthy = reply.get("kind") != "MemoryError"
                        raise _rejection(reply)
                    else:
                        raise wire.WireError("unexpected frame")
        except TimeoutError:
            raise errors.DecoderFailed("processing the media took too long") from None
        except (asyncio.IncompleteReadError, ConnectionError, wire.WireError, KeyError, ValueError, TypeError):
            raise errors.DecoderFailed() from None
        finally:
            worker.items += 1
            if healthy and worker.items < self.limits.recycle_after and not self._closed:
                self._queue(worker).put_nowait(worker)
            else:  # crashed, killed, timed out, cancelled mid-item, or due for recycling
                await asyncio.shield(self._retire(worker))
                self._replace(background=worker.background)

    @property
    def workers(self) -> int:
        return self.limits.workers


def _rejection(reply: dict[str, Any]) -> errors.VaultError:
    cls = _KINDS.get(str(reply.get("kind")))
    if cls is None:
        if reply.get("kind") == "MemoryError":
            return errors.DecoderFailed("the media needs more memory than allowed to process")
        return errors.DecoderFailed()
    message = reply.get("message")
    details = reply.get("details")
    return cls(str(message)[:200] if message else None,
               details=details if isinstance(details, dict) and len(str(details)) < 1024 else None)


def clean_environment() -> dict[str, str]:
    """No VAULT_* setting (URLs, credentials), no AWS_* or proxy variable: only what the
    decoders need, and one thread each (the pool is the parallelism).

    glibc's malloc keeps freed memory for reuse, as in the server (:mod:`vault.allocator`:
    every photo allocates the same few buffers of megabytes, and fresh pages are slow on a
    virtual machine). A worker's heap stays at its high mark, bounded by its address-space
    limit, until it is recycled after ``recycle_after`` items."""
    env = {"PATH": os.defpath, "LANG": "C.UTF-8", "MALLOC_ARENA_MAX": "2", "OMP_NUM_THREADS": "1",
           "OPENBLAS_NUM_THREADS": "1", "OPENCV_LOG_LEVEL": "ERROR", "PYTHONDONTWRITEBYTECODE": "1",
           "MALLOC_MMAP_THRESHOLD_": str(allocator.MMAP_THRESHOLD), "MALLOC_TRIM_THRESHOLD_": str(allocator.TRIM_THRESHOLD)}
    return env
