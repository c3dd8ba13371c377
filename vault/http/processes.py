"""``vault serve --processes N`` (``VAULT_HTTP_PROCESSES``): one node serving HTTP from N
processes, the gunicorn way, so it uses every core (a request's CPU is Python's, and one
interpreter runs on one core at a time).

The parent does the one-time preparation (migrations on the embedded default, the first
start's tenant and token, the banner), then **supervises** the node's audit writer and N
serving processes and serves nothing itself. A supervisor that serves nothing holds no
event loop, no thread and no client while its children run: its signal handling stays a
few lines, a crash or a stall of serving code never takes the supervisor with it, and
every serving process is alike (one code path, ``vault.http.server.run``). The price is
one idle process of some tens of MB.

Each serving process is a fresh interpreter (``sys.executable -m vault.cli serve …``, never
a ``fork`` of a process that had threads or a loop), in its own session (a Ctrl-C at the
terminal reaches the parent only, which passes it on once), armed to die with the parent
(``PR_SET_PDEATHSIG``). Each binds host:port with ``SO_REUSEPORT``; the kernel spreads new
connections over them. Each tells the parent when it listens through a pipe.

**The audit writer**, on PostgreSQL (``sys.executable -m vault.cli serve --audit-writer …``, same rules:
fresh interpreter, own session, dies with the parent, restarted with the same backoff) is
started first; the serving processes start once it listens. It owns the node's one read
audit writer and listens on ``audit.sock`` in the runtime folder; each serving process's
group commit sends it its batches and waits for each to be durable (:mod:`vault.audit.node`),
so the node has one group commit and one remembered head per clinic's chain, not one per
process racing the others for it. On SQLite there is none: each process's writer takes its
turn on the audit lock file, which measured cheaper than the socket hop (bench/RESULTS.md).

What the processes share and what each has (docs/operations.md):

* slot 0 alone runs the in-process job runner (``VAULT_INPROCESS_JOBS``); its heartbeat row
  is in the database, so every process's ``/readyz`` sees a live worker;
* ``VAULT_DECODER_WORKERS`` and ``VAULT_UPLOAD_MEMORY_BYTES`` are the node's totals: each
  process gets its share (at least 1 worker; at least 3 x ``VAULT_MAX_PHOTO_BYTES``), so
  memory does not grow with N; the upload counts (``VAULT_MAX_UPLOADS``, per token) stay
  per process;
* a private runtime folder (0700, made by the parent, removed at exit) holds the siblings'
  unix sockets for cache invalidation on SQLite (:mod:`vault.db.siblings`), the audit
  writer's socket and prometheus_client's multiprocess files (``/metrics`` reports the
  node's totals).

Signals: SIGTERM or SIGINT to the parent is passed to every serving process as SIGTERM
(each drains as a single ``vault serve`` does, within ``VAULT_SHUTDOWN_TIMEOUT``, and flushes
its last audit entries to the writer); a second one is passed on too (in-flight requests
are cancelled at once). Once every serving process has stopped, the audit writer gets
SIGTERM (it commits and answers what it holds, then exits). The parent exits 0 when every
child has stopped. A child that dies unexpectedly is logged and restarted after a backoff
(0.5 s, doubling to 30 s, back to the start once a child has lived a minute); a child that
fails before it ever listened at the node's start (a port in use, a bad configuration)
stops the node with exit status 1.
"""

from __future__ import annotations

import logging
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from vault.audit.node import SOCKET_NAME as AUDIT_SOCKET
from vault.config import Settings

log = logging.getLogger("vault.http")

#: a restarted child waits BACKOFF_FIRST s, doubling per failure up to BACKOFF_CAP s ...
BACKOFF_FIRST, BACKOFF_CAP = 0.5, 30.0
#: ... and a child that lived this long starts the count over
HEALTHY_AFTER = 60.0
#: after the children's own bound (drain + clean-up), the parent waits this much more, then kills
STOP_MARGIN = 5.0


def child_settings(settings: Settings, *, slot: int, processes: int, folder: Path) -> Settings:
    """A serving process's view of the node's settings."""
    return settings.replace(
        inprocess_jobs=settings.inprocess_jobs and slot == 0,
        decoder_workers=max(1, settings.decoder_workers // processes),
        # a photo at the size cap must still fit one process's share
        upload_memory_bytes=max(3 * settings.max_photo_bytes, settings.upload_memory_bytes // processes),
        siblings_dir=folder / "siblings",
        metrics_dir=folder / "metrics",
        audit_socket=None if settings.is_sqlite else folder / AUDIT_SOCKET,
        process_name=str(slot),
    )


def tell_parent(fd: int) -> None:
    """Called by a serving process once it listens."""
    try:
        os.write(fd, b"1")
    finally:
        os.close(fd)


#: the audit writer's slot, in logs
WRITER = -1


@dataclass
class _Child:
    slot: int  # WRITER for the audit writer
    proc: subprocess.Popen[bytes] | None = None
    ready_fd: int | None = None
    ready: bool = False
    started: float = 0.0
    failures: int = 0
    restart_at: float | None = None


class Supervisor:
    def __init__(self, settings: Settings, *, host: str, port: int, processes: int) -> None:
        from vault.http.server import CLEANUP_SECONDS

        self.settings, self.host, self.port, self.processes = settings, host, port, processes
        self.stop_bound = settings.shutdown_timeout + CLEANUP_SECONDS + STOP_MARGIN
        self.folder = Path(tempfile.mkdtemp(prefix="vault-serve-"))  # 0700
        for part in ("siblings", "metrics"):
            (self.folder / part).mkdir(mode=0o700)
        self.children = [_Child(slot) for slot in range(processes)]
        # PostgreSQL only: on SQLite each process's writer takes its turn on the audit lock
        # file (vault/audit/writer.py), which measured cheaper than the hop to a writer
        # process (bench/RESULTS.md, "One audit writer per node").
        self.writer: _Child | None = None if settings.is_sqlite else _Child(WRITER)
        self._serving_started = False
        self._writer_signalled = False
        self._writer_ever_ready = False
        self._signals = 0
        self._forwarded = 0
        self._stop_deadline: float | None = None
        self._status = 0
        self._ever_ready = False

    # -- children ------------------------------------------------------------------------
    def _argv(self, child: _Child, ready_fd: int) -> list[str]:
        if child.slot == WRITER:
            return [sys.executable, "-m", "vault.cli", "serve", "--audit-writer", "--parent", str(os.getpid()),
                    "--runtime-dir", str(self.folder), "--ready-fd", str(ready_fd)]
        return [sys.executable, "-m", "vault.cli", "serve", "--host", self.host, "--port", str(self.port),
                "--processes", str(self.processes), "--serving-slot", str(child.slot), "--parent", str(os.getpid()),
                "--runtime-dir", str(self.folder), "--ready-fd", str(ready_fd)]

    def _start(self, child: _Child) -> None:
        read, write = os.pipe()
        # prometheus_client reads its folder from the environment, when it is imported
        env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(self.folder / "metrics")}
        try:
            child.proc = subprocess.Popen(self._argv(child, write), env=env, pass_fds=(write,),
                                          start_new_session=True)
        except OSError:
            os.close(read)
            raise
        finally:
            os.close(write)
        child.ready_fd, child.ready, child.started, child.restart_at = read, False, time.monotonic(), None
        log.info(f"{_kind(child)} started", extra={"slot": child.slot, "pid": child.proc.pid})

    def _exited(self, child: _Child) -> None:
        from prometheus_client.multiprocess import mark_process_dead

        assert child.proc is not None
        pid, status = child.proc.pid, child.proc.returncode
        child.proc = None
        if child.ready_fd is not None:
            os.close(child.ready_fd)
            child.ready_fd = None
        mark_process_dead(pid, str(self.folder / "metrics"))  # its live gauges go
        kind = _kind(child)
        if self._stop_deadline is not None:
            log.info(f"{kind} stopped", extra={"slot": child.slot, "pid": pid, "status": status})
            # -SIGTERM: signalled before it had set up its handlers (still starting, serving nothing)
            if status not in (0, -signal.SIGTERM):
                self._status = 1
            return
        if not (self._writer_ever_ready if child.slot == WRITER else self._ever_ready):
            log.error(f"the {kind} failed at start; the node stops",
                      extra={"slot": child.slot, "pid": pid, "status": status})
            self._status = 1
            self._begin_stop()
            return
        lived = time.monotonic() - child.started
        child.failures = 0 if lived >= HEALTHY_AFTER else child.failures + 1
        delay = min(BACKOFF_CAP, BACKOFF_FIRST * 2 ** max(0, child.failures - 1))
        child.restart_at = time.monotonic() + delay
        log.error(f"the {kind} exited unexpectedly; it is restarted",
                  extra={"slot": child.slot, "pid": pid, "status": status, "retry_s": delay})

    def _live(self) -> list[_Child]:
        """Every live child, the audit writer included."""
        return [child for child in self._all() if child.proc is not None]

    def _all(self) -> list[_Child]:
        return [*self.children, self.writer] if self.writer is not None else list(self.children)

    def _start_serving(self) -> None:
        self._serving_started = True
        for child in self.children:
            self._start(child)

    def _serving(self) -> list[_Child]:
        return [child for child in self.children if child.proc is not None]

    # -- stopping ------------------------------------------------------------------------
    def _on_signal(self, signum: int, frame: object) -> None:
        self._signals += 1

    def _begin_stop(self) -> None:
        """The serving processes drain and flush their last audit entries to the writer;
        the writer is stopped once they all have (:meth:`_stop_writer`)."""
        if self._stop_deadline is None:
            self._stop_deadline = time.monotonic() + self.stop_bound
        for child in self._serving():
            _terminate(child)
        self._stop_writer()

    def _stop_writer(self) -> None:
        if self.writer is None or self.writer.proc is None or self._serving() or self._writer_signalled:
            return
        self._writer_signalled = True
        assert self._stop_deadline is not None
        self._stop_deadline = max(self._stop_deadline, time.monotonic() + STOP_MARGIN)  # one last commit
        _terminate(self.writer)

    # -- the loop ------------------------------------------------------------------------
    def run(self) -> int:
        wake_read, wake_write = os.pipe()
        os.set_blocking(wake_read, False)
        os.set_blocking(wake_write, False)
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        signal.set_wakeup_fd(wake_write)
        try:
            if self.writer is not None:
                self._start(self.writer)  # the serving processes start once it listens
            else:
                self._start_serving()
            while True:
                self._step(wake_read)
                if self._stop_deadline is not None and not self._live():
                    break
        finally:
            signal.set_wakeup_fd(-1)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            for child in self._live():  # only after an error in this loop
                assert child.proc is not None
                child.proc.kill()
                child.proc.wait()
            os.close(wake_read)
            os.close(wake_write)
            shutil.rmtree(self.folder, ignore_errors=True)
        log.info("stopped")
        return self._status

    def _step(self, wake_read: int) -> None:
        waiting = {child.ready_fd: child for child in self._all() if child.ready_fd is not None}
        readable, _, _ = select.select([wake_read, *waiting], [], [], 0.2)
        if wake_read in readable:
            while True:
                try:
                    if not os.read(wake_read, 64):
                        break
                except BlockingIOError:
                    break
        for fd in readable:
            child = waiting.get(fd)
            if child is None:
                continue
            said = os.read(fd, 16)
            os.close(fd)
            child.ready_fd = None
            if said and child.slot == WRITER:
                child.ready = self._writer_ever_ready = True
                log.info("audit writer listening", extra={"pid": child.proc.pid if child.proc else None})
            elif said:
                child.ready = self._ever_ready = True
                log.info("serving process listening", extra={"slot": child.slot})
        if self._signals > self._forwarded:
            first = self._forwarded == 0
            self._forwarded = self._signals
            log.info("stopping: every serving process drains" if first else
                     "second stop signal: in-flight requests are cancelled now")
            self._begin_stop()
        for child in self._all():
            if child.proc is not None and child.proc.poll() is not None:
                self._exited(child)
        now = time.monotonic()
        if self._stop_deadline is not None:
            self._stop_writer()
        elif self._writer_ever_ready and not self._serving_started:
            self._start_serving()
        if self._stop_deadline is None:
            for child in self._all():
                if child.proc is None and child.restart_at is not None and now >= child.restart_at:
                    self._start(child)
        elif now > self._stop_deadline:
            for child in self._live():
                assert child.proc is not None
                log.error(f"the {_kind(child)} outlasted the stop bound; it is killed",
                          extra={"slot": child.slot, "pid": child.proc.pid})
                child.proc.kill()
                child.proc.wait()
                self._exited(child)
            self._status = 1


def _kind(child: _Child) -> str:
    return "audit writer" if child.slot == WRITER else "serving process"


def _terminate(child: _Child) -> None:
    assert child.proc is not None
    try:
        child.proc.send_signal(signal.SIGTERM)
    except ProcessLookupError:
        pass


def supervise(settings: Settings, *, host: str, port: int, processes: int) -> int:
    return Supervisor(settings, host=host, port=port, processes=processes).run()
