"""What the read path keeps between requests, and its entity tags.

:class:`RenditionCache` remembers, per (media, rendition), the fields of a *ready*
rendition that never change: its tenant, patient, blob id, type and size. No decrypted
byte and no key is kept. It needs no invalidation from other nodes because every read
still reads the blob's key row (``SealedBlobs.open_key``), and every change that makes a
ready rendition unservable destroys that key first: deleting the media shreds its
object keys before marking it deleted, and erasing the patient shreds the DEK (the key
is destroyed first, then the rows are marked). A read whose key row is gone drops the
entry and asks the database again, which then gives the precise answer (410 erased or
deleted). Tenant checks are made against the cached tenant on every read.

Entity tags are digests of the blob id (and, for derived renditions, of everything the
bytes depend on), never an id itself: a tag changes whenever the bytes do, because
every write of a blob gets a new id.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from vault.sealed import SealedRef

CACHE_SECONDS = 300.0
CACHE_SIZE = 20_000


@dataclass(frozen=True, slots=True)
class ReadyRendition:
    tenant_id: str
    patient_id: str
    blob_id: str
    mime: str
    plain_size: int
    #: derived once, when the entry is made: the sealed blob's reference and the entity tag
    ref: SealedRef = field(init=False, compare=False)
    etag: str = field(init=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "ref", SealedRef(id=self.blob_id, tenant_id=self.tenant_id, patient_id=self.patient_id,
                                                  plain_size=self.plain_size))
        object.__setattr__(self, "etag", etag_of(self.blob_id))


class RenditionCache:
    def __init__(self, *, ttl: float = CACHE_SECONDS, size: int = CACHE_SIZE,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl, self.size, self._clock = ttl, size, clock
        self._entries: OrderedDict[tuple[str, str], tuple[float, ReadyRendition]] = OrderedDict()

    def get(self, media_id: str, rendition: str) -> ReadyRendition | None:
        entry = self._entries.get((media_id, rendition))
        if entry is None:
            return None
        if entry[0] <= self._clock():
            del self._entries[(media_id, rendition)]
            return None
        return entry[1]

    def put(self, media_id: str, rendition: str, value: ReadyRendition) -> None:
        if self.ttl <= 0 or self.size <= 0:
            return
        self._entries[(media_id, rendition)] = (self._clock() + self.ttl, value)
        self._entries.move_to_end((media_id, rendition))
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)

    def evict(self, media_id: str, rendition: str) -> None:
        self._entries.pop((media_id, rendition), None)

    def __len__(self) -> int:
        return len(self._entries)


def etag_of(*parts: str) -> str:
    """A strong entity tag (quoted) from what the bytes depend on; never an id itself."""
    digest = hashlib.sha256("\x1f".join(("vault-etag-v1", *parts)).encode()).hexdigest()[:32]
    return f'"{digest}"'


def none_match(etag: str, if_none_match: Iterable[str] | None) -> bool:
    """True when ``If-None-Match`` names this tag (weak comparison, RFC 9110 §13.1.2) or is ``*``."""
    if not if_none_match:
        return False
    value = etag.strip('"')
    return any(tag == "*" or tag == value for tag in if_none_match)
