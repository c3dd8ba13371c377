"""S3 errors, translated into the vault's exception tree inside the backend.

A missing object is :class:`~vault.errors.BlobNotFound`; what time or the operator can
fix — refused, dropped or timed-out connections, cut bodies, 5xx, SlowDown and throttling,
all after botocore's own retries — is :class:`~vault.errors.StorageUnavailable` (503 with
Retry-After); the rest is a plain :class:`~vault.errors.StorageError`. Everything is
raised ``from None`` with a message naming neither bucket nor key.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager

from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionError as BotoConnectionError,
    HTTPClientError,
    IncompleteReadError,
    NoCredentialsError,
    PartialCredentialsError,
    SSLError,
)

from vault.errors import BlobNotFound, StorageError, StorageUnavailable

_MISSING = {"NoSuchKey", "404", "NotFound"}
_TRANSIENT = {
    "SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout", "Throttling",
    "ThrottlingException", "RequestLimitExceeded", "503", "500",
}


def error_code(exc: ClientError) -> tuple[str, int]:
    code = str(exc.response.get("Error", {}).get("Code", ""))
    status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
    # The code goes into a message: keep it to a short token, whatever the server sent.
    return re.sub(r"[^A-Za-z0-9.]", "", code)[:64], status


@contextmanager
def translated(key: str | None = None) -> Iterator[None]:
    """Run a boto call, raising only vault errors. Messages never carry bucket or key."""
    try:
        yield
    except ClientError as exc:
        code, status = error_code(exc)
        if key is not None and code in _MISSING:
            raise BlobNotFound(key) from None
        if status >= 500 or code in _TRANSIENT:
            raise StorageUnavailable() from None
        if code == "NoSuchBucket":
            raise StorageError("the configured bucket does not exist") from None
        if status == 403 or code == "AccessDenied":
            raise StorageError("object storage denied access") from None
        raise StorageError(f"object storage error ({code or status})") from None
    except SSLError:
        # A certificate problem is configuration; retrying will not fix it.
        raise StorageError("object storage TLS handshake failed") from None
    except (BotoConnectionError, HTTPClientError, IncompleteReadError):
        # Refused connections, connect/read timeouts, dropped connections, cut bodies.
        raise StorageUnavailable() from None
    except (NoCredentialsError, PartialCredentialsError):
        raise StorageError("object storage credentials are missing") from None
    except BotoCoreError as exc:
        raise StorageError(f"object storage request failed ({type(exc).__name__})") from None
