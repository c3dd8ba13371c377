"""The vault's one exception tree.

Services raise these; they never import ``aiohttp.web``. One middleware
(:mod:`vault.http.middleware`) maps each class to its HTTP status and an RFC 9457
problem body (:mod:`vault.http.problems`): ``error`` is the code, ``detail`` the message,
``details`` the details, ``type`` a URI per code (docs/errors.md). Messages and details
must never carry patient data, key material or tokens: they reach clients and logs.

::

    VaultError (500 internal)
    ├── BadRequest (400 bad_request)
    │   └── ValidationFailed (422 invalid)
    ├── Unauthorized (401 unauthorized)
    ├── Forbidden (403 forbidden)
    │   └── ConsentRequired (403 consent_required)
    ├── NotFound (404 not_found)
    ├── Gone (410 gone)
    │   └── PatientErased (410 patient_erased)
    ├── Conflict (409 conflict)
    │   ├── LegalHold (409 legal_hold)
    │   ├── IdempotencyConflict (409 idempotency_conflict)
    │   └── NotReady (409 not_ready)
    ├── RequestTimeout (408 request_timeout)   -- the body stopped arriving; the connection is closed
    ├── TooManyUploads (429 too_many_uploads, retryable)
    ├── Busy (503 busy, retryable)             -- a node-wide upload or memory limit is full
    ├── RangeNotSatisfiable (416 range_not_satisfiable)
    ├── MediaRejected (422 media_rejected)
    │   ├── UnsupportedMedia (415 unsupported_media_type)
    │   ├── TooLarge (413 too_large)
    │   ├── PixelLimit (413 too_many_pixels)
    │   ├── CorruptMedia (422 corrupt_media)
    │   └── DecoderFailed (422 decoder_failed)  -- a decoder worker crashed, timed out or lied
    ├── DecoderBusy (503 decoders_busy, retryable)  -- every decoder worker busy, queue full
    ├── StorageError (500 storage_error)
    │   ├── BlobNotFound (500 blob_missing)  -- a dangling reference is our fault
    │   └── StorageUnavailable (503 storage_unavailable, retryable)
    ├── AuditUnavailable (503 audit_unavailable, retryable)  -- a read's entry could not be handed to the audit writer
    └── ConfigError (500 config_error)       -- raised at start, names the setting
"""

from __future__ import annotations

from typing import Any


class VaultError(Exception):
    status: int = 500
    code: str = "internal"
    default_message: str = "internal error"
    retry_after: int | None = None

    def __init__(self, message: str | None = None, *, details: dict[str, Any] | None = None) -> None:
        self.message = message or self.default_message
        self.details = details or {}
        super().__init__(self.message)


class BadRequest(VaultError):
    status, code, default_message = 400, "bad_request", "bad request"


class ValidationFailed(BadRequest):
    status, code, default_message = 422, "invalid", "request failed validation"


class Unauthorized(VaultError):
    status, code, default_message = 401, "unauthorized", "a valid bearer token is required"


class Forbidden(VaultError):
    status, code, default_message = 403, "forbidden", "this role may not do that"


class ConsentRequired(Forbidden):
    code, default_message = "consent_required", "no consent covers this release"


class NotFound(VaultError):
    status, code, default_message = 404, "not_found", "not found"


class Gone(VaultError):
    status, code, default_message = 410, "gone", "gone"


class PatientErased(Gone):
    code, default_message = "patient_erased", "the patient has been erased"


class Conflict(VaultError):
    status, code, default_message = 409, "conflict", "conflict"


class LegalHold(Conflict):
    code, default_message = "legal_hold", "a legal hold prevents this"


class IdempotencyConflict(Conflict):
    code, default_message = "idempotency_conflict", "this Idempotency-Key was used for a different request"


class NotReady(Conflict):
    code, default_message = "not_ready", "the media is not ready"


class RequestTimeout(VaultError):
    status, code, default_message = 408, "request_timeout", "the request body arrived too slowly"


class TooManyUploads(VaultError):
    status, code, default_message = 429, "too_many_uploads", "too many uploads in progress for this token, try again"
    retry_after = 5


class Busy(VaultError):
    status, code, default_message = 503, "busy", "the service is at its upload limit, try again"
    retry_after = 5


class RangeNotSatisfiable(VaultError):
    status, code, default_message = 416, "range_not_satisfiable", "range not satisfiable"


class MediaRejected(VaultError):
    status, code, default_message = 422, "media_rejected", "the media was rejected"


class UnsupportedMedia(MediaRejected):
    status, code, default_message = 415, "unsupported_media_type", "unsupported media type"


class TooLarge(MediaRejected):
    status, code, default_message = 413, "too_large", "the body is larger than allowed"


class PixelLimit(MediaRejected):
    status, code, default_message = 413, "too_many_pixels", "the image has more pixels than allowed"


class CorruptMedia(MediaRejected):
    status, code, default_message = 422, "corrupt_media", "the media is damaged or not what it claims to be"


class DecoderFailed(MediaRejected):
    """The decoder worker handling this item crashed, was killed at its time or memory
    bound, or returned something the server's re-check refused: this item only."""

    status, code, default_message = 422, "decoder_failed", "the media could not be processed safely"


class DecoderBusy(VaultError):
    """Every decoder worker is busy and the wait for one is full or too long."""

    status, code, default_message = 503, "decoders_busy", "the media decoders are busy, try again"
    retry_after = 5


class StorageError(VaultError):
    status, code, default_message = 500, "storage_error", "storage error"


class BlobNotFound(StorageError):
    code, default_message = "blob_missing", "a stored object is missing"

    def __init__(self, key: str) -> None:
        # The key is a random id (invariant 5), safe to keep for operators' logs.
        super().__init__(details={})
        self.key = key


class StorageUnavailable(StorageError):
    status, code, default_message = 503, "storage_unavailable", "storage is unavailable, try again"
    retry_after = 5


class AuditUnavailable(VaultError):
    """A read could not be audited because the node's audit writer process was not there
    (``vault serve --processes N`` while it restarts): the read is refused, never answered
    without its entry."""

    status, code, default_message = 503, "audit_unavailable", "the audit log is unavailable, try again"
    retry_after = 1


class ConfigError(VaultError):
    code, default_message = "config_error", "invalid configuration"

    def __init__(self, setting: str, problem: str) -> None:
        super().__init__(f"{setting}: {problem}")
        self.setting = setting
