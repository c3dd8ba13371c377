"""Blobs in S3 or an S3-compatible object store (``s3://`` URLs), through boto3.

boto3 is blocking, so every call runs in a thread of the store's own bounded pool
(``io_threads``, closed by :meth:`S3Store.close`), never the loop's default one: a thread
of that pool may be waiting on us (a blocking reader bridged back to the loop), and S3
calls stuck on a slow endpoint must not starve everything else run in threads. One client
is shared, since botocore clients are thread-safe. Credentials come from the standard AWS chain
(environment, profile, instance or task role), never from the URL, which gets logged.

Objects are ``<prefix>/<key>``. Streams up to ``part_size`` bytes go up in one PutObject;
longer ones as a multipart upload, one part buffered while the previous one uploads, so a
put holds at most two parts in memory. S3 shows neither kind until it is complete, and a
failed or cancelled put aborts its upload. Uploads orphaned by a crash are aborted by
:meth:`S3Store.sweep_partials` (or a bucket lifecycle rule).

Vendor errors stop here (see :mod:`vault.storage.s3_errors`): a missing object is
:class:`~vault.errors.BlobNotFound`; timeouts, dropped connections, 5xx and throttling
(after botocore's own retries) are :class:`~vault.errors.StorageUnavailable`.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
from collections.abc import AsyncIterable, AsyncIterator, Callable, Collection
from concurrent.futures import Executor, ThreadPoolExecutor
from contextlib import suppress
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar
from urllib.parse import parse_qsl, unquote, urlsplit

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

from vault.errors import BlobNotFound, ConfigError, StorageError
from vault.storage.base import (
    DEFAULT_CHUNK_SIZE,
    BlobReader,
    ThreadLane,
    check_key,
    check_prefix,
    check_range,
    check_size_hint,
    open_off_loop,
)
from vault.storage.s3_errors import error_code, translated

log = logging.getLogger(__name__)
T = TypeVar("T")

MIN_PART_SIZE = 5 << 20  # S3's floor for every part but the last
MAX_PARTS = 10_000
DEFAULT_PART_SIZE = 8 << 20
IO_THREADS = 16  # concurrent S3 calls per store (each holds one pooled connection)

_URL_OPTIONS = {
    "endpoint_url", "region", "addressing_style", "connect_timeout", "read_timeout",
    "max_attempts", "part_size",
}


_session_lock = threading.Lock()
_session: boto3.session.Session | None = None


def _new_client(**kwargs: Any) -> Any:
    # A boto3 session is not thread-safe, its clients are. Sharing one session (under a
    # lock) reuses the parsed S3 service model: ~0.1 s saved for every store after the first.
    global _session
    with _session_lock:
        if _session is None:
            _session = boto3.session.Session()
        return _session.client("s3", **kwargs)


class _S3Reader(BlobReader):
    def __init__(self, body: Any, key: str, *, length: int, total_size: int, chunk_size: int,
                 executor: Executor | None = None) -> None:
        super().__init__(length=length, total_size=total_size, chunk_size=chunk_size, executor=executor)
        self._body = body
        self._key = key

    def _read_blocking(self, n: int) -> bytes:
        with translated(self._key):
            return self._body.read(n)

    def _close_blocking(self) -> None:
        if self._body is not None:
            with suppress(Exception):
                self._body.close()


def _close_opened(opened: tuple[Any, int, int]) -> None:
    if opened[0] is not None:
        opened[0].close()


def _total_from_content_range(value: str | None, fallback: int) -> int:
    # "bytes 0-99/1234"
    if value and "/" in value:
        total = value.rsplit("/", 1)[1]
        if total.isdigit():
            return int(total)
    return fallback


class _Upload:
    """One put: a single PutObject, or a multipart upload whose parts go up in a worker
    thread one at a time. Every blocking call runs on one lane, so :meth:`undo` can wait
    for whatever is still in flight (a cancelled await does not stop its thread)."""

    def __init__(self, store: S3Store, key: str) -> None:
        self._store = store
        self._key = key
        self._object_key = store._object_key(key)
        self._lane = ThreadLane(store._io)
        self._upload_id: str | None = None
        self._parts: list[dict[str, Any]] = []
        self._stored = False

    async def add(self, data: bytes) -> None:
        """Queue a part; returns once the previous part is up, not this one."""
        if self._upload_id is None:
            await self._lane.run(self._create)
        await self._lane.wait()
        self._lane.start(self._upload_part, len(self._parts) + 1, data)

    async def finish(self, tail: bytes) -> None:
        """Upload the rest (the last part, or the whole blob) and make it visible."""
        if self._upload_id is None:
            await self._lane.run(self._put_single, tail)
            return
        if tail:
            await self.add(tail)
        await self._lane.wait()
        await self._lane.run(self._complete)

    async def undo(self) -> None:
        """Leave nothing of this put behind, whatever stage it failed or was cancelled in."""
        await self._lane.settle()
        if not self._stored and self._upload_id is None:
            return
        try:
            await asyncio.shield(self._lane.start(self._undo))
        except StorageError:
            log.warning("could not undo a failed put; sweep_partials or clean-up will retry")

    # The rest runs in worker threads.

    def _create(self) -> None:
        with translated():
            resp = self._store._client.create_multipart_upload(
                Bucket=self._store.bucket, Key=self._object_key,
                ContentType="application/octet-stream", ChecksumAlgorithm="CRC32",
            )
        self._upload_id = resp["UploadId"]

    def _upload_part(self, number: int, data: bytes) -> None:
        with translated():
            resp = self._store._client.upload_part(
                Bucket=self._store.bucket, Key=self._object_key, UploadId=self._upload_id,
                PartNumber=number, Body=data, ChecksumAlgorithm="CRC32",
            )
        part = {"PartNumber": number, "ETag": resp["ETag"]}
        if "ChecksumCRC32" in resp:
            part["ChecksumCRC32"] = resp["ChecksumCRC32"]
        self._parts.append(part)

    def _complete(self) -> None:
        with translated():
            self._store._client.complete_multipart_upload(
                Bucket=self._store.bucket, Key=self._object_key, UploadId=self._upload_id,
                MultipartUpload={"Parts": self._parts},
            )
        self._stored = True

    def _put_single(self, data: bytes) -> None:
        with translated():
            self._store._client.put_object(
                Bucket=self._store.bucket, Key=self._object_key, Body=data,
                ContentType="application/octet-stream",
            )
        self._stored = True

    def _undo(self) -> None:
        if self._stored:
            # Cancelled while the last call was landing: the caller was told it failed.
            with translated():
                self._store._client.delete_object(Bucket=self._store.bucket, Key=self._object_key)
        elif self._upload_id is not None:
            self._store._abort_upload(self._object_key, self._upload_id)


class S3Store:
    """A :class:`~vault.storage.base.BlobStore` on S3 or an S3-compatible service."""

    def __init__(
        self,
        *,
        bucket: str,
        prefix: str = "",
        endpoint_url: str | None = None,
        region: str | None = None,
        addressing_style: str | None = None,
        connect_timeout: float = 5.0,
        read_timeout: float = 30.0,
        max_attempts: int = 3,
        part_size: int = DEFAULT_PART_SIZE,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        io_threads: int = IO_THREADS,
    ) -> None:
        if not bucket:
            raise ConfigError("VAULT_STORAGE_URL", "the s3: URL names no bucket")
        if part_size < MIN_PART_SIZE:
            raise ConfigError("VAULT_STORAGE_URL", f"part_size must be at least {MIN_PART_SIZE} bytes")
        if addressing_style not in (None, "auto", "path", "virtual"):
            raise ConfigError("VAULT_STORAGE_URL", "addressing_style must be auto, path or virtual")
        if chunk_size <= 0 or connect_timeout <= 0 or read_timeout <= 0 or max_attempts < 1 or io_threads < 1:
            raise ConfigError("VAULT_STORAGE_URL", "timeouts, chunk size and attempts must be positive")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self._part_size = part_size
        self._chunk_size = chunk_size
        config = Config(
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            # "total_max_attempts" counts the first try; the dict key "max_attempts" would not.
            retries={"mode": "standard", "total_max_attempts": max_attempts},
            s3={"addressing_style": addressing_style or "auto"},
            signature_version="s3v4",
            # One connection for every thread of the store's pool.
            max_pool_connections=io_threads,
        )
        self._client = _new_client(endpoint_url=endpoint_url, region_name=region, config=config)
        # Created last: a refused configuration leaves no pool behind.
        self._io = ThreadPoolExecutor(max_workers=io_threads, thread_name_prefix="blob-s3")

    @classmethod
    def from_url(cls, url: str) -> S3Store:
        """``s3://bucket/prefix?endpoint_url=http://host:port&region=eu-west-1`` plus the
        optional ``addressing_style``, ``connect_timeout``, ``read_timeout``,
        ``max_attempts`` and ``part_size`` (bytes)."""
        parts = urlsplit(url)
        if parts.scheme != "s3":
            raise ConfigError("VAULT_STORAGE_URL", "an S3 store needs an s3: URL")
        if "@" in parts.netloc:
            raise ConfigError("VAULT_STORAGE_URL", "no credentials in the URL; use the AWS credential chain")
        options = dict(parse_qsl(parts.query, keep_blank_values=True, strict_parsing=False))
        unknown = set(options) - _URL_OPTIONS
        if unknown:
            raise ConfigError("VAULT_STORAGE_URL", f"unknown s3: URL options {sorted(unknown)}")
        try:
            numbers: dict[str, Any] = {
                name: conv(options[name])
                for name, conv in (("connect_timeout", float), ("read_timeout", float),
                                   ("max_attempts", int), ("part_size", int))
                if name in options
            }
        except ValueError:
            raise ConfigError("VAULT_STORAGE_URL", "s3: URL options must be numbers") from None
        return cls(
            bucket=parts.netloc,
            prefix=unquote(parts.path),
            endpoint_url=options.get("endpoint_url") or None,
            region=options.get("region") or None,
            addressing_style=options.get("addressing_style") or None,
            **numbers,
        )

    def __repr__(self) -> str:
        return f"S3Store(bucket={self.bucket!r}, prefix={self.prefix!r})"

    def _object_key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    async def _call(self, key: str | None, fn: Callable[..., Any], /, **kwargs: Any) -> Any:
        def call() -> Any:
            with translated(key):
                return fn(**kwargs)

        return await self._run(call)

    async def _run(self, fn: Callable[..., T], /, *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._io, functools.partial(fn, *args))

    def _part_size_for(self, size_hint: int | None) -> int:
        # 10 000 parts is S3's limit: a large announced stream gets larger parts.
        if size_hint is None:
            return self._part_size
        return max(self._part_size, -(-size_hint // MAX_PARTS))

    async def put(
        self, key: str, chunks: AsyncIterable[bytes], *, size_hint: int | None = None
    ) -> int:
        check_key(key)
        check_size_hint(size_hint)
        part_size = self._part_size_for(size_hint)
        buf = bytearray()
        total = 0
        upload = _Upload(self, key)
        try:
            async for chunk in chunks:
                buf += chunk
                total += len(chunk)
                # ">" not ">=": a stream of exactly one part stays a single PutObject.
                while len(buf) > part_size:
                    with memoryview(buf) as view:
                        part = bytes(view[:part_size])
                    del buf[:part_size]
                    await upload.add(part)
            tail = bytes(buf)
            buf.clear()
            await upload.finish(tail)
        except BaseException:
            await upload.undo()
            raise
        return total

    async def get(self, key: str, *, start: int = 0, end: int | None = None) -> BlobReader:
        check_key(key)
        check_range(start, end)
        body, length, total = await open_off_loop(lambda: self._open(key, start, end), _close_opened, self._io)
        return _S3Reader(body, key, length=length, total_size=total, chunk_size=self._chunk_size, executor=self._io)

    def _open(self, key: str, start: int, end: int | None) -> tuple[Any, int, int]:
        """(body or None, bytes it yields, blob size); runs in a worker thread."""
        if end is not None and end == start:
            return None, 0, self._head(key)
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": self._object_key(key)}
        if start or end is not None:
            kwargs["Range"] = f"bytes={start}-{'' if end is None else end - 1}"
        with translated(key):
            try:
                resp = self._client.get_object(**kwargs)
            except ClientError as exc:
                # S3 answers 416 for a start at or past the end (and for any range on
                # an empty object); slice rules make that an empty read.
                if error_code(exc)[0] != "InvalidRange":
                    raise
                return None, 0, self._head(key)
        length = int(resp["ContentLength"])
        total = _total_from_content_range(resp.get("ContentRange"), length)
        return resp["Body"], length, total

    def _head(self, key: str) -> int:
        with translated(key):
            return int(self._client.head_object(Bucket=self.bucket, Key=self._object_key(key))["ContentLength"])

    async def read(self, key: str, *, start: int = 0, end: int | None = None) -> bytes:
        check_key(key)
        check_range(start, end)
        return await self._run(self._read_all, key, start, end)

    def _read_all(self, key: str, start: int, end: int | None) -> bytes:
        body, _, _ = self._open(key, start, end)
        if body is None:
            return b""
        try:
            with translated(key):
                return body.read()
        finally:
            body.close()

    async def delete(self, key: str) -> None:
        check_key(key)
        # DeleteObject already succeeds for a missing key.
        await self._call(key, self._client.delete_object, Bucket=self.bucket, Key=self._object_key(key))

    async def exists(self, key: str) -> bool:
        try:
            await self.size(key)
        except BlobNotFound:
            return False
        return True

    async def size(self, key: str) -> int:
        check_key(key)
        return await self._run(self._head, key)

    async def keys(self, prefix: str = "") -> AsyncIterator[str]:
        check_prefix(prefix)
        base = self._object_key("")
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": base + prefix}
        while True:
            page = await self._call(None, self._client.list_objects_v2, **kwargs)
            for item in page.get("Contents", ()):
                name = item["Key"][len(base):]
                # Objects someone else put under our prefix are not blobs of ours.
                if "/" not in name:
                    try:
                        yield check_key(name)
                    except ValueError:
                        continue
            if not page.get("IsTruncated"):
                return
            kwargs["ContinuationToken"] = page["NextContinuationToken"]

    async def sweep_partials(self, older_than_s: float = 3600.0, *, keep: Collection[str] = ()) -> int:
        """Abort multipart uploads with no activity for ``older_than_s``: the newest
        part's upload time, or the start for an upload with no part yet. A slow upload
        that started hours ago but sent a part recently is kept, and so is any upload
        of a key in ``keep`` (its writer still holds a lease)."""
        if older_than_s < 0:
            raise ValueError("older_than_s must be >= 0")
        cutoff = datetime.now(UTC) - timedelta(seconds=older_than_s)
        base = self._object_key("")
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": base}
        started_before: list[tuple[str, str]] = []
        while True:
            page = await self._call(None, self._client.list_multipart_uploads, **kwargs)
            started_before += [
                (u["Key"], u["UploadId"]) for u in page.get("Uploads", ())
                if u["Initiated"] < cutoff and u["Key"][len(base):] not in keep
            ]
            if not page.get("IsTruncated"):
                break
            kwargs["KeyMarker"] = page["NextKeyMarker"]
            kwargs["UploadIdMarker"] = page["NextUploadIdMarker"]
        aborted = 0
        for object_key, upload_id in started_before:
            last = await self._run(self._last_part_at, object_key, upload_id)
            if last is None or last < cutoff:
                await self._run(self._abort_upload, object_key, upload_id)
                aborted += 1
        return aborted

    def _last_part_at(self, object_key: str, upload_id: str) -> datetime | None:
        """When the upload's newest part arrived (None: no part, or the upload is gone)."""
        newest: datetime | None = None
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": object_key, "UploadId": upload_id}
        with translated():
            while True:
                try:
                    page = self._client.list_parts(**kwargs)
                except ClientError as exc:
                    if error_code(exc)[0] == "NoSuchUpload":
                        return None
                    raise
                for part in page.get("Parts", ()):
                    newest = part["LastModified"] if newest is None else max(newest, part["LastModified"])
                if not page.get("IsTruncated"):
                    return newest
                kwargs["PartNumberMarker"] = page["NextPartNumberMarker"]

    def _abort_upload(self, object_key: str, upload_id: str) -> None:
        with translated():
            try:
                self._client.abort_multipart_upload(Bucket=self.bucket, Key=object_key, UploadId=upload_id)
            except ClientError as exc:
                # Another sweeper or the writer itself got there first.
                if error_code(exc)[0] != "NoSuchUpload":
                    raise

    async def close(self) -> None:
        """Refuse new calls, drop queued ones and close the client's connections. A call
        already running finishes on its own (bounded by the client's connect/read timeouts
        and attempts); its thread is not waited for."""
        self._io.shutdown(wait=False, cancel_futures=True)
        self._client.close()  # closes pooled sockets: no network round trip
