"""S3 failures become vault errors: unreachable or overloaded storage is retryable
(StorageUnavailable, 503), everything else a plain StorageError, never a vendor exception.

The failing servers are real sockets on loopback that misbehave the way networks and
overloaded S3 endpoints do; boto3 talks HTTP to them unchanged."""

from __future__ import annotations

import socket
import socketserver
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager

import pytest

from vault.errors import BlobNotFound, StorageError, StorageUnavailable
from vault.storage import S3Store, new_key

BUCKET = "vault-errors"


def _read_request(sock: socket.socket) -> bool:
    """Consume one HTTP request (headers and a Content-Length body); False on EOF."""
    data = b""
    while b"\r\n\r\n" not in data:
        more = sock.recv(65536)
        if not more:
            return False
        data += more
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
        if name.strip().lower() == b"expect":
            # Like S3: answer "Expect: 100-continue" at once instead of taking the body.
            return True
    while len(body) < length:
        more = sock.recv(65536)
        if not more:
            return False
        body += more
    return True


def _error_response(status: int, reason: str, code: str) -> bytes:
    xml = f"<?xml version='1.0'?><Error><Code>{code}</Code><Message>x</Message></Error>".encode()
    return (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/xml\r\n"
        f"Content-Length: {len(xml)}\r\nConnection: close\r\n\r\n"
    ).encode() + xml


BEHAVIOURS = {
    "slow_down": lambda: _error_response(503, "Slow Down", "SlowDown"),
    "internal_error": lambda: _error_response(500, "Internal Server Error", "InternalError"),
    "access_denied": lambda: _error_response(403, "Forbidden", "AccessDenied"),
    # Headers promise 1000 bytes, the connection dies after 10.
    "truncated": lambda: b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\nConnection: close\r\n\r\n" + b"0" * 10,
}


class _Misbehaving(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, behaviour: str) -> None:
        self.behaviour = behaviour
        self.requests_seen = 0
        self.release = threading.Event()
        super().__init__(("127.0.0.1", 0), _Handler)


class _Handler(socketserver.BaseRequestHandler):
    server: _Misbehaving

    def handle(self) -> None:
        if not _read_request(self.request):
            return
        self.server.requests_seen += 1
        behaviour = self.server.behaviour
        if behaviour == "drop":
            return  # close without a word
        if behaviour == "hang":
            self.server.release.wait(10)
            return
        self.request.sendall(BEHAVIOURS[behaviour]())


@contextmanager
def misbehaving(behaviour: str) -> Iterator[_Misbehaving]:
    server = _Misbehaving(behaviour)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.release.set()
        server.shutdown()
        server.server_close()


def _store(url: str, *, attempts: int = 1) -> S3Store:
    return S3Store.from_url(
        f"s3://{BUCKET}/p?endpoint_url={url}&region=eu-west-1"
        f"&connect_timeout=0.5&read_timeout=0.5&max_attempts={attempts}"
    )


async def _one(data: bytes) -> AsyncIterator[bytes]:
    yield data


def _calls(store: S3Store, key: str):
    async def listed() -> list[str]:
        return [k async for k in store.keys()]

    async def streamed() -> bytes:
        async with await store.get(key) as blob:
            return b"".join([c async for c in blob])

    return {
        "put": lambda: store.put(key, _one(b"ciphertext")),
        "get": streamed,
        "read": lambda: store.read(key, start=0, end=10),
        "size": lambda: store.size(key),
        "exists": lambda: store.exists(key),
        "delete": lambda: store.delete(key),
        "keys": listed,
        "sweep_partials": lambda: store.sweep_partials(0),
    }


def _assert_clean(exc: BaseException, key: str) -> None:
    # Raised "from None" and saying nothing about where: the message reaches clients.
    assert exc.__suppress_context__
    assert key not in str(exc) and BUCKET not in str(exc)


@pytest.fixture
def aws_env(monkeypatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    for name in ("AWS_PROFILE", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize("call", ["put", "get", "read", "size", "exists", "delete", "keys", "sweep_partials"])
async def test_closed_port_is_unavailable(aws_env, call: str) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once the socket closes
    store = _store(f"http://127.0.0.1:{port}")
    key = new_key()
    try:
        with pytest.raises(StorageUnavailable) as caught:
            await _calls(store, key)[call]()
        assert caught.value.status == 503 and caught.value.retry_after
        _assert_clean(caught.value, key)
    finally:
        await store.close()


@pytest.mark.parametrize("behaviour", ["slow_down", "internal_error", "drop", "hang"])
@pytest.mark.parametrize("call", ["put", "get", "size", "keys"])
async def test_overloaded_or_broken_endpoint_is_unavailable(aws_env, behaviour: str, call: str) -> None:
    with misbehaving(behaviour) as server:
        store = _store(f"http://127.0.0.1:{server.server_address[1]}")
        key = new_key()
        try:
            with pytest.raises(StorageUnavailable) as caught:
                await _calls(store, key)[call]()
            _assert_clean(caught.value, key)
            assert server.requests_seen >= 1
        finally:
            await store.close()


async def test_transient_errors_are_retried_before_giving_up(aws_env) -> None:
    with misbehaving("slow_down") as server:
        store = _store(f"http://127.0.0.1:{server.server_address[1]}", attempts=2)
        try:
            with pytest.raises(StorageUnavailable):
                await store.size(new_key())
        finally:
            await store.close()
    assert server.requests_seen == 2


async def test_body_cut_mid_stream_is_unavailable(aws_env) -> None:
    with misbehaving("truncated") as server:
        store = _store(f"http://127.0.0.1:{server.server_address[1]}")
        key = new_key()
        try:
            blob = await store.get(key)
            assert blob.length == 1000
            with pytest.raises(StorageUnavailable) as caught:
                async with blob:
                    async for _ in blob:
                        pass
            _assert_clean(caught.value, key)
            with pytest.raises(StorageUnavailable):
                await store.read(key)
        finally:
            await store.close()


@pytest.mark.parametrize("call", ["put", "get", "delete", "keys"])
async def test_access_denied_is_not_retryable(aws_env, call: str) -> None:
    with misbehaving("access_denied") as server:
        store = _store(f"http://127.0.0.1:{server.server_address[1]}")
        key = new_key()
        try:
            with pytest.raises(StorageError) as caught:
                await _calls(store, key)[call]()
            assert type(caught.value) is StorageError
            assert caught.value.status == 500
            _assert_clean(caught.value, key)
        finally:
            await store.close()


async def test_missing_bucket_is_a_storage_error_not_a_missing_blob(moto) -> None:
    store = S3Store.from_url(f"s3://no-such-bucket-{uuid.uuid4().hex[:8]}?endpoint_url={moto.url}&region={moto.region}")
    key = new_key()
    try:
        for call in ("put", "get", "keys"):
            with pytest.raises(StorageError) as caught:
                await _calls(store, key)[call]()
            assert not isinstance(caught.value, (BlobNotFound, StorageUnavailable))
            assert "bucket" in caught.value.message
    finally:
        await store.close()
