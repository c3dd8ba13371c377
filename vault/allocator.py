"""glibc's malloc told to keep and reuse freed memory, for processes that handle photos.

Every upload allocates the same few buffers of megabytes (the body, the stripped file, its
ciphertext). By default glibc gives each such buffer its own ``mmap`` and returns it on
free, so the next one starts on fresh pages: on a virtual machine a first touch of a page
costs up to ~50 us (measured here: a fresh 5 MB buffer ~60 ms, more than encrypting it,
bench/RESULTS.md, issue 15). Below :data:`MMAP_THRESHOLD` buffers come from the heap, and
freed heap up to :data:`TRIM_THRESHOLD` is kept for the next upload instead of being given
back. The price is resident memory at its high mark, which the upload memory budget
(``VAULT_UPLOAD_MEMORY_BYTES``) bounds. The decoder workers get the same through their
environment (:func:`vault.media.decoders.clean_environment`).
"""

from __future__ import annotations

import ctypes
import sys

MMAP_THRESHOLD = 32 << 20  # glibc's largest accepted value on 64-bit (HEAP_MAX_SIZE / 2)
TRIM_THRESHOLD = 512 << 20
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # <malloc.h>


def keep_freed_memory() -> bool:
    """Apply the thresholds; False where there is no glibc ``mallopt`` (musl, macOS)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))


def release_freed_memory() -> bool:
    """Give the heap freed so far back to the system once (glibc ``malloc_trim``): what
    start-up freed (migrations, imports, the app's set-up) is not kept at its high mark
    for uploads that may never come. False where there is no glibc."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return False
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return bool(trim(0))
