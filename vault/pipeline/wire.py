"""The framing between the server and its decoder worker processes (both ends).

A frame is ``>II`` (JSON length, payload length), a JSON object, then raw payload bytes;
``parts`` in the JSON splits the payload into several byte strings. JSON and raw bytes,
never pickle: a compromised worker must not be able to make the server run code by what
it sends back. The server bounds every length before it allocates anything.
"""

from __future__ import annotations

import json
import struct
from typing import Any, BinaryIO

_HEAD = struct.Struct(">II")
HEAD_SIZE = _HEAD.size
MAX_JSON = 1 << 20


class WireError(Exception):
    """The other end broke the protocol (or went away)."""


def encode(header: dict[str, Any], *parts: bytes | bytearray | memoryview) -> list[bytes | memoryview]:
    if parts:
        header = {**header, "parts": [len(p) for p in parts]}
    raw = json.dumps(header, separators=(",", ":")).encode()
    total = sum(len(p) for p in parts)
    return [_HEAD.pack(len(raw), total), raw, *(memoryview(p) for p in parts)]


def decode_head(head: bytes, *, max_payload: int) -> tuple[int, int]:
    json_len, payload_len = _HEAD.unpack(head)
    if json_len > MAX_JSON or payload_len > max_payload:
        raise WireError("frame larger than allowed")
    return json_len, payload_len


def decode_body(raw: bytes, payload: bytes) -> tuple[dict[str, Any], list[bytes]]:
    try:
        header = json.loads(raw)
    except ValueError:
        raise WireError("frame header is not JSON") from None
    if not isinstance(header, dict):
        raise WireError("frame header is not an object")
    sizes = header.pop("parts", [len(payload)] if payload else [])
    if not isinstance(sizes, list) or not all(isinstance(s, int) and s >= 0 for s in sizes) or sum(sizes) != len(payload):
        raise WireError("frame parts do not add up")
    parts, pos = [], 0
    for size in sizes:
        parts.append(payload[pos:pos + size])
        pos += size
    return header, parts


# -- blocking side (the worker) ------------------------------------------------------------
def send(out: BinaryIO, header: dict[str, Any], *parts: bytes | bytearray | memoryview) -> None:
    for piece in encode(header, *parts):
        out.write(piece)
    out.flush()


def receive(inp: BinaryIO, *, max_payload: int) -> tuple[dict[str, Any], list[bytes]]:
    json_len, payload_len = decode_head(_exactly(inp, HEAD_SIZE), max_payload=max_payload)
    raw = _exactly(inp, json_len)
    return decode_body(raw, _exactly(inp, payload_len))


def _exactly(inp: BinaryIO, n: int) -> bytes:
    # A buffered reader's read(n) waits for all n bytes (or the end of the pipe) into one
    # new bytes object: no second copy of a 5 MB photo.
    data = inp.read(n)
    if len(data) != n:
        raise WireError("the other end closed the pipe")
    return data
