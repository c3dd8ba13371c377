"""The decoder worker: a process of its own that runs the photo pipeline and the video
probe, remux and poster/face scan for the server, and holds nothing worth stealing.

Started by :mod:`vault.media.decoders` as a fresh interpreter (``python -I``, a clean
environment, no inherited descriptors but its two pipes), it imports its libraries, loads
the face model, confines itself (:func:`vault.pipeline.sandbox.confine_worker`) and only
then reads work. Bytes in, stripped bytes, renditions, capture metadata and boxes out (and, for a
de-identified release, bytes and boxes in, a face-redacted JPEG out; for the full-resolution
face search job, a stored photo in, boxes and the search's state out; for a DICOM export,
a stored photo and the attributes in, the DICOM file out)
(:mod:`vault.pipeline.wire`); a video is never sent whole: the worker asks the server for
byte ranges (the server decrypts them) and streams its fragmented-MP4 output back in
chunks (the server encrypts them). Nothing here touches a file.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import io
import os
import socket
import sys
from collections import OrderedDict
from typing import TYPE_CHECKING, Any, BinaryIO, cast

from vault.pipeline import wire
from vault.pipeline.results import stripped_wire

if TYPE_CHECKING:
    from vault.pipeline.sanitize import Sanitized

BLOCK = 1 << 20  # ranges are asked for in aligned blocks: PyAV reads 32 KiB at a time
CACHED_BLOCKS = 8
WRITE_BATCH = 1 << 20
PIPE_BYTES = 1 << 20
MAX_REQUEST = 1 << 30  # a photo upload is far below this; videos come by ranges


class RemoteReader(io.RawIOBase):
    """A seekable reader of ``size`` plaintext bytes that live in the server."""

    def __init__(self, inp: BinaryIO, out: BinaryIO, size: int) -> None:
        self._inp, self._out, self._size, self._pos = inp, out, size, 0
        self._blocks: OrderedDict[int, bytes] = OrderedDict()

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        if base + offset < 0:
            raise OSError(errno.EINVAL, "negative seek")
        self._pos = base + offset
        return self._pos

    def _block(self, index: int) -> bytes:
        block = self._blocks.get(index)
        if block is None:
            start = index * BLOCK
            end = min(self._size, start + BLOCK)
            wire.send(self._out, {"t": "read", "start": start, "end": end})
            header, parts = wire.receive(self._inp, max_payload=BLOCK)
            block = parts[0] if parts else b""
            if header.get("t") != "data" or len(block) != end - start:
                raise OSError(errno.EIO, "the server could not read the stored video")
            self._blocks[index] = block
            if len(self._blocks) > CACHED_BLOCKS:
                self._blocks.popitem(last=False)
        else:
            self._blocks.move_to_end(index)
        return block

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        if self._pos >= self._size or not len(view):
            return 0
        index, offset = divmod(self._pos, BLOCK)
        block = self._block(index)
        n = min(len(view), len(block) - offset)
        view[:n] = block[offset:offset + n]
        self._pos += n
        return n


class StreamWriter:
    """Forward-only writer whose bytes go back to the server in batches."""

    def __init__(self, out: BinaryIO) -> None:
        self._out, self._buf, self._size = out, bytearray(), 0

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        self._buf += view
        self._size += len(view)
        if len(self._buf) >= WRITE_BATCH:
            self.flush()
        return len(view)

    def tell(self) -> int:
        return self._size

    def flush(self) -> None:
        if self._buf:
            wire.send(self._out, {"t": "write"}, self._buf)
            self._buf = bytearray()


class Worker:
    def __init__(self, inp: BinaryIO, out: BinaryIO, face_model: str | None) -> None:
        from PIL import Image

        from vault.pipeline.faces import load_detector
        from vault.pipeline.faces_search import load_search, search_photo
        from vault.pipeline.photo import process_photo
        from vault.pipeline.composite import compose
        from vault.pipeline.redact import render_redaction
        from vault.pipeline.video import poster_and_faces, probe_video, strip_video
        from vault.pipeline import dicom

        Image.init()  # every image plugin now, before the sandbox closes the file system
        self.inp, self.out = inp, out
        self.detector = load_detector(face_model)
        self.search = load_search(face_model)  # the full-resolution search (a job, after upload)
        self._search_photo = search_photo
        self._photo, self._probe, self._strip, self._poster = process_photo, probe_video, strip_video, poster_and_faces
        self._render = render_redaction
        self._compose = compose
        dicom.warm_up()  # pydicom loads parts of itself on first use: before the sandbox closes
        self._dicom = dicom.build_instance

    def serve(self) -> None:
        while True:
            try:
                header, parts = wire.receive(self.inp, max_payload=MAX_REQUEST)
            except wire.WireError:
                return  # the server closed our pipe: it is going away, so do we
            try:
                reply, out_parts = self.handle(header, parts)
            except MemoryError:
                wire.send(self.out, {"t": "error", "kind": "MemoryError"})
                return  # the heap may be in any state: let the server start a fresh one
            except Exception as exc:  # noqa: BLE001 - reported as a kind, never as data
                wire.send(self.out, _error(exc))
                continue
            wire.send(self.out, reply, *out_parts)

    def _send_stripped(self, sanitized: Sanitized) -> None:
        """The stripped original, sent before the decode starts: the server checks, encrypts
        and stores it meanwhile. A JPEG's goes as ranges of the upload (the server has it)
        and the few new bytes, not 5 MB more through the pipe; the server rebuilds it and
        re-checks it like any stripped file."""
        layout, new = stripped_wire(sanitized.data, sanitized.layout)
        wire.send(self.out, {"t": "progress", "stripped": {"mime": sanitized.mime, "layout": layout}}, new)

    def _remote(self, header: dict[str, Any]) -> BinaryIO:
        # A seekable file over the pipe: the demuxer uses only read, seek and tell.
        return cast(BinaryIO, RemoteReader(self.inp, self.out, int(header["size"])))

    def handle(self, header: dict[str, Any], parts: list[bytes]) -> tuple[dict[str, Any], list[bytes]]:
        op = header.get("op")
        max_pixels = int(header.get("max_pixels", 0))  # the server always sends it; absent, nothing passes
        if op == "photo":
            photo = self._photo(parts[0], max_pixels=max_pixels, detector=self.detector, on_stripped=self._send_stripped)
            sizes = sorted(photo.thumbnails)
            result = {"mime": photo.mime, "width": photo.width, "height": photo.height,
                      "orientation": photo.orientation, "capture": photo.capture,
                      "faces": photo.faces.as_dict(), "thumbnails": sizes}
            return {"t": "done", "result": result}, [photo.thumbnails[s] for s in sizes]
        if op == "faces":
            found = self._search_photo(parts[0], self.search, max_pixels=max_pixels,
                                       memory_bytes=int(header["memory_bytes"]), seconds=float(header["seconds"]))
            return {"t": "done", "result": found.as_dict()}, []
        if op == "render_redaction":
            rects = [[int(v) for v in box] for box in header["rects"]]
            if any(len(box) != 4 for box in rects):
                raise ValueError("a rectangle is [x, y, w, h]")
            sizes = sorted(int(s) for s in header["thumbnails"])
            full, thumbs = self._render(parts[0], rects, thumbnail_sizes=sizes, max_pixels=int(header["max_pixels"]))
            return {"t": "done", "result": {"thumbnails": sizes}}, [full, *(thumbs[s] for s in sizes)]
        if op == "composite":
            sides = [[[int(v) for v in box] for box in side] for side in header["rects"]]
            if len(parts) != 2 or any(len(box) != 4 for side in sides for box in side):
                raise ValueError("a composite is two photos; a rectangle is [x, y, w, h]")
            composite, plan = self._compose(parts, sides, max_pixels=max_pixels, labels=[str(v) for v in header["labels"]])
            return {"t": "done", "result": {"size": list(plan.size)}}, [composite]
        if op == "probe":
            probe = self._probe(self._remote(header), max_pixels=max_pixels)
            return {"t": "done", "result": probe.as_dict()}, []
        if op == "strip":
            writer = StreamWriter(self.out)
            info = self._strip(self._remote(header), cast(BinaryIO, writer), max_pixels=max_pixels)
            writer.flush()
            return {"t": "done", "result": info.as_dict()}, []
        if op == "poster":
            thumbnails, faces = self._poster(self._remote(header),
                                             detector=self.detector, max_pixels=max_pixels)
            sizes = sorted(thumbnails)
            return ({"t": "done", "result": {"faces": faces.as_dict(), "thumbnails": sizes}},
                    [thumbnails[s] for s in sizes])
        if op == "dicom":
            instance = self._dicom(parts[0], dict(header["attributes"]), max_pixels=max_pixels)
            result = {"transfer_syntax": instance.transfer_syntax, "encapsulated": instance.encapsulated,
                      "rows": instance.rows, "columns": instance.columns}
            return {"t": "done", "result": result}, [instance.data]
        if op == "sandbox_check":
            return {"t": "done", "result": sandbox_check(header)}, []
        raise ValueError("unknown operation")


def _error(exc: Exception) -> dict[str, Any]:
    from vault.errors import VaultError

    if isinstance(exc, VaultError):  # our own messages are written to be shown to users
        return {"t": "error", "kind": type(exc).__name__, "message": exc.message, "details": exc.details}
    return {"t": "error", "kind": "internal"}


def sandbox_check(header: dict[str, Any]) -> dict[str, str]:
    """Try what an exploit would try; report ``ok`` or the errno name for each attempt.
    The server runs it at start (and the tests with the key store and the database)."""
    found: dict[str, str] = {}
    for path in [f"/proc/{os.getppid()}/mem", *header.get("paths", [])]:
        found[f"open:{path}"] = _attempt(lambda p=path: os.close(os.open(p, os.O_RDONLY)))
    for host, port in header.get("connect", []):
        def connect(h: str = host, p: int = port) -> None:
            with socket.create_connection((h, p), timeout=2):
                pass
        found[f"connect:{host}:{port}"] = _attempt(connect)
    return found


def _attempt(action: Any) -> str:
    try:
        action()
    except OSError as exc:
        return errno.errorcode.get(exc.errno or 0, type(exc).__name__)
    return "ok"


def _widen_pipes(*fds: int) -> None:
    """1 MiB pipe buffers both ways (Linux; the default is 64 KiB): a 5 MB photo crosses in
    a few writes instead of ~80 wake-ups of the server's event loop and of this process."""
    set_size: int | None = getattr(fcntl, "F_SETPIPE_SZ", None)
    if set_size is None:
        return
    for fd in fds:
        with contextlib.suppress(OSError):  # not a pipe, or over /proc/sys/fs/pipe-max-size
            fcntl.fcntl(fd, set_size, PIPE_BYTES)


def main() -> None:
    """Entry point of ``python -I -c``: argv is [face_model or "", address_space_bytes, nice]."""
    from vault.pipeline.sandbox import confine_worker, die_with_parent

    dies_with_parent = die_with_parent(os.getppid())  # first: the imports below take seconds
    # The protocol owns the original stdout; anything a library prints goes to stderr.
    out = os.fdopen(os.dup(1), "wb", buffering=1 << 16)
    os.dup2(2, 1)
    _widen_pipes(0, out.fileno())
    inp = os.fdopen(0, "rb", buffering=1 << 16)
    face_model, address_space, nice = sys.argv[1] or None, int(sys.argv[2]), int(sys.argv[3])
    if nice:
        os.nice(nice)  # a background worker (the face search): uploads' workers go first
    worker = Worker(inp, out, face_model)

    report = confine_worker(address_space_bytes=address_space or None)
    report["dies_with_parent"] = dies_with_parent
    wire.send(out, {"t": "ready", "sandbox": report, "detector": worker.detector.name,
                    "search": worker.search.version})
    worker.serve()
