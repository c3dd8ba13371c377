"""A small LRU + TTL cache of unwrapped keys.

It saves unwrap work (a KMS round trip for a KEK, an AES-GCM open for a DEK), never the
existence check: the store still reads the key row on every use, so a destroyed key
stops working at once on every node even before its cache entry is evicted.

Destroying keys names a *scope* (:data:`Scope`): the store evicts it here and hands it to
``announce`` (set by whoever runs several processes: the vault publishes it on a
``LISTEN/NOTIFY`` channel), and every other process evicts the same scope with
:meth:`KeyCache.evict_scope` when it hears of it. Scopes carry ids only.
"""

from __future__ import annotations

import time
from collections import OrderedDict
import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Hashable

log = logging.getLogger("keys.cache")

# ("kek", tenant, version), ("dek", tenant, patient, ...), ("obj", tenant, patient, object, ...), ("idx", tenant)
CacheKey = tuple[Hashable, ...]
#: what a destruction invalidates: ("patient", tenant, patient) | ("object", tenant, patient, object)
#: | ("kek", tenant, version) | ("all",)
Scope = tuple[str, ...]
SCOPE_SIZES = {"patient": 3, "object": 4, "kek": 3, "all": 1}


def encode_scope(scope: Scope) -> str:
    """``kind:id:id``; ids are hex or digits, never a colon."""
    if SCOPE_SIZES.get(scope[0]) != len(scope) or any(":" in part for part in scope):
        raise ValueError("not a key cache scope")
    return ":".join(scope)


def decode_scope(text: str) -> Scope:
    scope = tuple(text.split(":"))
    if SCOPE_SIZES.get(scope[0]) != len(scope):
        raise ValueError("not a key cache scope")
    return scope


def _in_scope(key: CacheKey, scope: Scope) -> bool:
    kind = scope[0]
    if kind == "all":
        return True
    if kind == "patient":  # the DEK and every object key under it
        return key[0] in ("dek", "obj") and key[1:3] == scope[1:3]
    if kind == "object":
        return key[0] == "obj" and key[1:4] == scope[1:4]
    # a KEK version: its KEK and the epoch's blind-index key
    return key[0] in ("kek", "eidx") and key[1] == scope[1] and str(key[2]) == scope[2]


class KeyCache:
    def __init__(self, *, ttl: float, size: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self.size = size
        self._clock = clock
        self._entries: OrderedDict[CacheKey, tuple[float, bytes]] = OrderedDict()
        self.hits = self.misses = 0  # plain counters: vault/metrics.py exports them, keys/ stays Prometheus-free
        self.scope_evictions = 0  # entries dropped by evict_scope (own destructions and other nodes')
        #: told of every scope this process destroys, so other processes evict it too
        self.announce: Callable[[Scope], Awaitable[None]] | None = None

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

    def evict_scope(self, scope: Scope) -> int:
        dropped = self.evict_where(lambda key: _in_scope(key, scope))
        self.scope_evictions += dropped
        return dropped

    async def destroyed(self, scope: Scope) -> None:
        """Keys in ``scope`` were destroyed here: evict them, and tell the other processes.
        A failed announcement is logged, not raised: the destruction is done, and every
        read checks the key row anyway."""
        self.evict_scope(scope)
        if self.announce is not None:
            try:
                await self.announce(scope)
            except Exception as exc:  # noqa: BLE001
                log.warning("could not announce destroyed keys to other processes: %s", type(exc).__name__)

    def kinds(self) -> dict[str, int]:
        """Entries per kind (``kek``, ``dek``, ``obj``, ``idx``), for metrics."""
        return dict(Counter(str(key[0]) for key in self._entries))

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)
