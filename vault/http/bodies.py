"""Reading request bodies with a deadline, and the body's own parse errors as ours.

``StreamReader.read(n)`` waits for as long as the client likes, and returns as soon as
one byte has arrived. :class:`TimedBody` makes every read gather at least
:data:`BLOCK` bytes (or the rest of the body) within ``timeout`` seconds: a stalled
client and one trickling a byte a second are both cut off after ``timeout`` with
:class:`~vault.errors.RequestTimeout` (408, connection closed by the middleware),
so no slow client holds an upload slot or its buffer for long. A client at 3 KiB/s
or faster never notices (64 KiB in 20 s, the default).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from aiohttp.http_exceptions import HttpProcessingError

from vault.errors import BadRequest, RequestTimeout

BLOCK = 64 * 1024


class TimedBody:
    def __init__(self, read: Callable[[int], Awaitable[bytes]], timeout: float) -> None:
        self._read = read
        self.timeout = timeout

    async def read(self, n: int) -> bytes:
        """Up to ``n`` bytes; fewer than ``min(n, BLOCK)`` only at the end of the body."""
        want = min(n, BLOCK)
        parts: list[bytes] = []
        got = 0
        deadline = asyncio.timeout(self.timeout)
        try:
            async with deadline:
                while got < want:
                    chunk = await self._read(n - got)
                    if not chunk:
                        break
                    parts.append(chunk)
                    got += len(chunk)
        except TimeoutError:
            if deadline.expired():
                raise RequestTimeout(details={"timeout_s": self.timeout}) from None
            raise
        except (HttpProcessingError, ValueError, AssertionError):
            # A broken chunked encoding, a bad multipart part (aiohttp's multipart reader
            # raises ValueError and AssertionError too): the client's fault.
            raise BadRequest("malformed request body") from None
        return parts[0] if len(parts) == 1 else b"".join(parts)


async def within(timeout: float, step: Awaitable):
    """One body step that is not a plain read (a multipart part's headers) under the same deadline."""
    deadline = asyncio.timeout(timeout)
    try:
        async with deadline:
            return await step
    except TimeoutError:
        if deadline.expired():
            raise RequestTimeout(details={"timeout_s": timeout}) from None
        raise
    except (HttpProcessingError, ValueError, AssertionError, KeyError):
        raise BadRequest("malformed request body") from None
