"""The HTTP server around the app: aiohttp's connection handler with a header-read
timeout and JSON answers for requests its parser refuses.

aiohttp (3.14) has neither of these: a client may take as long as it likes to send a
request head (only the keep-alive timer, 75 s by default, ever closes such a connection),
and a request the parser refuses (a header over 8190 bytes, a malformed line) gets a
plain-text 400 that echoes the start of the offending line — for an oversized
``Authorization`` header, the start of a bearer token — and logs it with a traceback.

:class:`VaultRunner` is an ``AppRunner`` whose connections are :class:`VaultRequestHandler`;
``vault serve`` (:func:`run`) and the tests' client fixture both use it, so what is tested
is what runs. Body reads have their own timeout (:mod:`vault.http.bodies`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Callable
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from vault.allocator import release_freed_memory
from vault.http.jsonio import json_response
from vault.http.problems import PROBLEM_JSON, problem

log = logging.getLogger("vault.http")

#: aiohttp's run_app default; a bare AppRunner would keep idle connections for an hour
KEEPALIVE_TIMEOUT = 75.0
#: after the requests are drained, closing the app's clients (database, decoders) gets this long
CLEANUP_SECONDS = 8.0


class VaultRequestHandler(RequestHandler):
    """One client connection.

    The header timer (as hyper's ``header_read_timeout``) starts when the connection is
    made, and on a kept-alive connection at the first byte of the next request; it stops
    when the parser has a whole request head. When it fires the connection is closed
    without an answer: the client is not reading one. An idle kept-alive connection is
    left to the keep-alive timer, so client connection pools keep working.
    """

    def __init__(self, manager: web.Server, *, header_timeout: float, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._header_timeout = header_timeout
        self._header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._arm_header_timer()

    def data_received(self, data: bytes) -> None:
        if self._close and not self._force_close and self._request_in_progress:
            # A graceful stop has marked this connection to close after its request
            # (``close()``), and aiohttp then drops every byte that arrives: the rest of an
            # upload's body would never come and the upload would fail. Keep reading it.
            self._close = False
            try:
                self._received(data)
            finally:
                self._close = True
            return
        self._received(data)

    def _received(self, data: bytes) -> None:
        # start() waits on _waiter only between requests: bytes arriving then begin a head.
        # The timer is armed only when they did not hold a whole head: a request whose
        # head comes in one read (nearly all) costs no timer to make and cancel.
        begins = bool(data) and self._header_timer is None and self._waiter is not None
        parsed = self._request_count
        super().data_received(data)
        if self._request_count != parsed:  # a whole head (or a parse error) came out
            self._cancel_header_timer()
        elif begins:
            self._arm_header_timer()

    async def shutdown(self, timeout: float | None = 15.0) -> None:
        """A graceful stop of this connection. aiohttp's own first sets ``_force_close``,
        after which every byte that arrives is dropped: an upload whose body is still
        arriving could never finish. So the request in progress is waited for here first,
        its connection still reading (``close()`` already marked it to end after this
        request); aiohttp's shutdown then finds nothing to wait for, or — past the
        timeout — cancels the handler."""
        if self._request_in_progress and timeout:
            started = self._loop.time()
            waiter = self._loop.create_future()
            self._handler_waiter = waiter
            try:
                await asyncio.wait_for(asyncio.shield(waiter), timeout)
            except asyncio.TimeoutError:
                log.warning("a request outlasted the shutdown timeout; it is cancelled", extra={"timeout_s": timeout})
            finally:
                self._handler_waiter = None
            # never 0 or less: aiohttp reads that as "no timeout"
            timeout = max(1.0, timeout - (self._loop.time() - started))
        await super().shutdown(timeout)

    async def finish_response(self, request: Any, resp: web.StreamResponse, start_time: float | None) -> Any:
        if self._close and not resp.prepared:
            resp.force_close()  # stopping: say so (``Connection: close``), so the client opens its next elsewhere
        return await super().finish_response(request, resp, start_time)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._cancel_header_timer()
        super().connection_lost(exc)

    def _arm_header_timer(self) -> None:
        self._cancel_header_timer()
        self._header_timer = self._loop.call_later(self._header_timeout, self._header_timed_out)

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timed_out(self) -> None:
        self._header_timer = None
        if self._request_in_progress or self._messages:
            return
        log.info("request head timeout", extra={"timeout_s": self._header_timeout})
        self.force_close()

    def handle_error(
        self, request: Any, status: int = 500, exc: BaseException | None = None, message: str | None = None
    ) -> web.StreamResponse:
        """aiohttp's last-resort answer: for requests its parser refuses, and for anything
        that escaped the middlewares. A problem+json body in the error shape of the API, echoing nothing;
        the log gets the status and the exception's class, never its text (which may
        hold the start of a header)."""
        if isinstance(exc, ConnectionError):
            # The client went away, or a middleware cut off a response that had started.
            log.info("client abort", extra={"status": 499})
            raise ConnectionResetError("client abort") from None
        log.warning("request refused", extra={"status": status, "reason": type(exc).__name__ if exc else None})
        if request.writer.output_size > 0:
            raise ConnectionResetError("a response had started; the connection is cut")
        if status < 500:
            body = problem("bad_request", status, "the request could not be parsed", instance="")
        else:
            body = problem("internal", status, "internal error", instance="")
        response = json_response(body, status=status, content_type=PROBLEM_JSON)
        response.force_close()
        return response


class VaultServer(web.Server):
    def __init__(self, handler: Any, *, header_timeout: float, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self.header_timeout = header_timeout

    def __call__(self) -> RequestHandler:
        return VaultRequestHandler(self, loop=self._loop, header_timeout=self.header_timeout, **self._kwargs)


class VaultRunner(web.AppRunner):
    """``web.AppRunner`` serving connections with :class:`VaultRequestHandler`; the
    header timeout comes from the app's settings."""

    def __init__(self, app: web.Application, **kwargs: Any) -> None:
        kwargs.setdefault("keepalive_timeout", KEEPALIVE_TIMEOUT)
        # A client that goes away does not cancel its handler at whatever await it is at
        # (half a transaction, half an audit write): the handler sees the reset at its
        # next read or write and ends as a client abort. aiohttp's test server asks for
        # cancellation; serving and testing must behave alike.
        kwargs["handler_cancellation"] = False
        super().__init__(app, **kwargs)

    async def _make_server(self) -> web.Server:
        from vault.appkeys import SETTINGS

        server = await super()._make_server()  # starts the app; carries aiohttp's handler options
        return VaultServer(
            server.request_handler,
            request_factory=server.request_factory,
            handler_cancellation=server.handler_cancellation,
            loop=asyncio.get_running_loop(),
            header_timeout=self.app[SETTINGS].http_header_timeout,
            **server._kwargs,
        )


def run(app: web.Application, *, host: str, port: int, reuse_port: bool = False,
        on_listening: Callable[[], None] | None = None) -> None:
    """``vault serve``: like ``web.run_app``, with :class:`VaultRunner`, and a graceful stop.

    SIGTERM (or SIGINT) closes the listening socket at once — new connections are refused,
    so a proxy sends them to another node — and idle kept-alive connections; requests in
    flight, uploads included, run to their answer for up to ``VAULT_SHUTDOWN_TIMEOUT``
    seconds, each connection closing after its answer. Then whatever is still running is
    cancelled, the app's clients close and the process exits 0. A second signal ends the
    wait for the requests at once. ``reuse_port`` (SO_REUSEPORT) lets the serving processes
    of ``vault serve --processes N`` bind one address; ``on_listening`` is called once the
    socket listens (vault.http.processes tells the parent). (aiohttp's own ``handle_signals`` raises ``GracefulExit``
    inside the event loop, which makes ``asyncio.run`` cancel every request's task at once.)
    """
    from vault.appkeys import SETTINGS

    drain = app[SETTINGS].shutdown_timeout

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        stopping = asyncio.Event()
        signals = (signal.SIGTERM, signal.SIGINT)
        runner = VaultRunner(app, access_log=None, shutdown_timeout=drain)
        await runner.setup()
        cleanup: asyncio.Task[None] | None = None

        def on_signal() -> None:
            if not stopping.is_set():
                stopping.set()
            elif cleanup is not None and not cleanup.done():
                log.info("second stop signal: in-flight requests are cancelled now")
                if runner.server is not None:
                    for conn in list(runner.server.connections):
                        conn.force_close()

        for sig in signals:
            loop.add_signal_handler(sig, on_signal)
        try:
            await web.TCPSite(runner, host, port, reuse_port=reuse_port or None).start()
            release_freed_memory()  # start-up's garbage; uploads keep theirs from now on (vault/allocator.py)
            if on_listening is not None:
                on_listening()
            await stopping.wait()
            busy = sum(1 for conn in (runner.server.connections if runner.server else ()) if conn._request_in_progress)
            log.info("stopping: no new connections; waiting for requests in flight",
                     extra={"in_flight": busy, "timeout_s": drain})
        finally:
            cleanup = asyncio.create_task(runner.cleanup())
            # Bounded: the unit's TimeoutStopSec must never be what ends a node. Requests
            # are drained within ``drain`` (plus aiohttp's cancel phase); closing the clients
            # after that takes seconds.
            done, _ = await asyncio.wait({cleanup}, timeout=drain + CLEANUP_SECONDS)
            if not done:
                stuck = [f"{t.get_name()}: {t.get_coro()!r}" for t in asyncio.all_tasks() if t is not asyncio.current_task()]
                log.error("stopping took too long; exiting without finishing the clean-up",
                          extra={"pending": stuck[:20]})
                logging.shutdown()
                os._exit(0)
            cleanup.result()
            for sig in signals:
                loop.remove_signal_handler(sig)
        log.info("stopped")

    asyncio.run(serve())
