"""A real S3/KMS-compatible HTTP server on loopback for tests (moto's server mode).

Tests talk to it over HTTP through boto3 exactly as production talks to AWS:
no in-process patching of botocore.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass


@dataclass(frozen=True)
class MotoEndpoint:
    url: str
    region: str = "eu-west-1"
    access_key: str = "testing"
    secret_key: str = "testing"

    def client(self, service: str):
        import boto3

        return boto3.client(
            service,
            endpoint_url=self.url,
            region_name=self.region,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
        )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def moto_server() -> Iterator[MotoEndpoint]:
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield MotoEndpoint(url=f"http://127.0.0.1:{port}")
    finally:
        server.stop()
