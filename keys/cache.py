"""A small LRU + TTL cache of unwrapped keys.

It saves unwrap work (a KMS round trip for a KEK, an AES-GCM open for a DEK), never the
existence check: the store still reads the key row on every use, so a destroyed key
stops working at once on every node even before its cache entry is evicted.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Hashable

# ("kek", tenant, version), ("dek", tenant, patient, ...), ("obj", tenant, patient, object, ...)
CacheKey = tuple[Hashable, ...]


class KeyCache:
    def __init__(self, *, ttl: float, size: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self.size = size
        self._clock = clock
        self._entries: OrderedDict[CacheKey, tuple[float, bytes]] = OrderedDict()
        self.hits = self.misses = 0  # plain counters: vault/metrics.py exports them, keys/ stays Prometheus-free

    def get(self, key: CacheKey) -> bytes | None:
        entry = self._entries.get(key)
        if entry is None:
            self.misses += 1
            return None
        expires, value = entry
        if expires <= self._clock():
            del self._entries[key]
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return value

    def put(self, key: CacheKey, value: bytes) -> None:
        if self.ttl <= 0 or self.size <= 0:
            return
        self._entries[key] = (self._clock() + self.ttl, value)
        self._entries.move_to_end(key)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)

    def evict(self, key: CacheKey) -> None:
        self._entries.pop(key, None)

    def evict_where(self, predicate: Callable[[CacheKey], bool]) -> int:
        """Evict every entry whose key matches; linear, but the cache is small and bounded."""
        doomed = [key for key in self._entries if predicate(key)]
        for key in doomed:
            del self._entries[key]
        return len(doomed)

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)
