"""Admission limits for uploads on one node: how many at once (per token and in all),
and how many bytes of photo bodies may sit in memory at once.

Nothing here waits: a full limit is answered at once with 429 (this token's own
uploads) or 503 (the node's), both with ``Retry-After`` — a queue of waiting uploads
would itself hold connections and memory (invariant 11: every wait has a bound).
Videos stream to storage chunk by chunk, so only photos take from the memory budget.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

from vault.errors import Busy, TooManyUploads


# A photo of N bytes costs about this many N of memory while it is handled: the buffered
# body, the stripped original and renditions coming back from the decoder worker, and the
# ciphertext being stored (measured by bench/bench_limits.py: ~2x with one copy counted).
WORKING_COPIES = 3


class MemoryLease:
    """The bytes one upload holds; grows as its body arrives, returned at the end."""

    def __init__(self, budget: MemoryBudget) -> None:
        self._budget = budget
        self.held = 0

    def ensure(self, body: int) -> None:
        """Hold the working memory of a ``body``-byte photo, or raise Busy (503) when
        the budget cannot."""
        more = body * WORKING_COPIES - self.held
        if more <= 0:
            return
        if self._budget.used + more > self._budget.total:
            raise Busy("photo uploads are using all the memory set aside for them, try again")
        self._budget.used += more
        self.held += more

    def release(self) -> None:
        self._budget.used -= self.held
        self.held = 0


class MemoryBudget:
    def __init__(self, total: int) -> None:
        self.total = total
        self.used = 0

    @contextmanager
    def lease(self) -> Iterator[MemoryLease]:
        lease = MemoryLease(self)
        try:
            yield lease
        finally:
            lease.release()


class UploadLimits:
    def __init__(self, *, per_node: int, per_token: int, memory_bytes: int) -> None:
        self.per_node = per_node
        self.per_token = per_token
        self.memory = MemoryBudget(memory_bytes)
        self._by_token: Counter[str] = Counter()
        self.active = 0

    @classmethod
    def from_settings(cls, settings) -> UploadLimits:
        return cls(per_node=settings.max_uploads, per_token=settings.max_uploads_per_token,
                   memory_bytes=settings.upload_memory_bytes)

    @contextmanager
    def admit(self, token_id: str) -> Iterator[None]:
        """One upload slot for ``token_id`` until the block ends (the response is chosen)."""
        # The token's own limit first: one busy client is told to slow down (429) rather
        # than being told the whole node is full.
        if self._by_token[token_id] >= self.per_token:
            raise TooManyUploads(details={"limit": self.per_token})
        if self.active >= self.per_node:
            raise Busy(details={"limit": self.per_node})
        self._by_token[token_id] += 1
        self.active += 1
        try:
            yield
        finally:
            self.active -= 1
            self._by_token[token_id] -= 1
            if not self._by_token[token_id]:
                del self._by_token[token_id]
