"""Sending one DICOM file to the PACS by DICOMweb STOW-RS (PS3.18 10.5).

``POST <VAULT_DICOMWEB_URL>/studies`` with ``multipart/related; type="application/dicom"``,
one part, from memory (no temp file). The destination goes through the webhooks' SSRF
guard (:mod:`vault.webhooks.delivery`): https only (plain http to loopback only under
``VAULT_DICOMWEB_ALLOW_HTTP_LOOPBACK``, for tests), every address the host resolves to
checked (a private PACS passes only through ``VAULT_DICOMWEB_ALLOW_NETWORKS``), the
connection pinned to the checked address, no redirects, no proxy from the environment.

Every failure raises :class:`StowFailed` with a short code (never the URL, the response
body or patient data): the job retries it, and the last one is what the export reports.
"""

from __future__ import annotations

import base64
import json
import secrets
import ssl
from dataclasses import dataclass, field

import aiohttp

from vault.webhooks.delivery import AllowList, Refused, pinned_session, resolve, tls_context

TIMEOUT = aiohttp.ClientTimeout(total=300, connect=10, sock_connect=10, sock_read=120)
MAX_RESPONSE = 1 << 20
_REFERENCED_SOP_SEQUENCE, _FAILED_SOP_SEQUENCE, _REFERENCED_SOP_INSTANCE = "00081199", "00081198", "00081155"


class StowFailed(Exception):
    """The PACS did not store the instance; ``code`` is short and safe to keep and show."""

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


@dataclass(frozen=True, kw_only=True)
class DicomWebTarget:
    url: str
    allow: AllowList
    allow_http_loopback: bool = False
    authorization: str | None = field(default=None, repr=False)
    tls: ssl.SSLContext | None = field(default=None, repr=False)

    @classmethod
    def from_settings(cls, settings) -> DicomWebTarget | None:
        if settings.dicomweb_url is None:
            return None
        authorization = None
        if settings.dicomweb_token is not None:
            authorization = f"Bearer {settings.dicomweb_token}"
        elif settings.dicomweb_username is not None:
            pair = f"{settings.dicomweb_username}:{settings.dicomweb_password}".encode()
            authorization = "Basic " + base64.b64encode(pair).decode()
        ca_file = str(settings.dicomweb_ca_file) if settings.dicomweb_ca_file else None
        return cls(url=settings.dicomweb_url.rstrip("/"), allow=AllowList.of(settings.dicomweb_allow_networks),
                   allow_http_loopback=settings.dicomweb_allow_http_loopback,
                   authorization=authorization, tls=tls_context(ca_file))

    async def store(self, instance: bytes, *, sop_instance_uid: str) -> None:
        """Send one Part 10 file; returns once the PACS says it stored that instance."""
        try:
            destination = await resolve(f"{self.url}/studies", allow_http_loopback=self.allow_http_loopback,
                                        allow=self.allow)
        except Refused as refused:
            raise StowFailed(f"refused_{refused.problem}") from None
        boundary = secrets.token_hex(16)
        while boundary.encode() in instance:  # never in practice; a boundary must not occur in a part
            boundary = secrets.token_hex(16)
        body = b"".join((f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode(), instance,
                         f"\r\n--{boundary}--\r\n".encode()))
        headers = {"Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
                   "Accept": "application/dicom+json"}
        if self.authorization is not None:
            headers["Authorization"] = self.authorization
        try:
            async with pinned_session(destination, timeout=TIMEOUT) as session:
                async with session.post(destination.url, data=body, headers=headers, allow_redirects=False,
                                        ssl=self.tls if self.tls is not None else True) as response:
                    status = response.status
                    raw = await response.content.read(MAX_RESPONSE) if status == 200 else b""
        except TimeoutError:
            raise StowFailed("timeout") from None
        except aiohttp.ClientSSLError:
            raise StowFailed("tls_error") from None
        except (aiohttp.ClientError, OSError):
            raise StowFailed("unreachable") from None
        if status != 200:
            raise StowFailed(f"http_{status}")
        stored = _stored_uids(raw)
        if stored is not None and sop_instance_uid not in stored:
            raise StowFailed("not_stored")


def _stored_uids(raw: bytes) -> set[str] | None:
    """The SOP Instance UIDs the STOW-RS response lists as stored (None: no readable body).
    A Failed SOP Sequence counts as nothing stored."""
    try:
        document = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(document, dict):
        return None
    if document.get(_FAILED_SOP_SEQUENCE, {}).get("Value"):
        return set()
    uids: set[str] = set()
    for item in document.get(_REFERENCED_SOP_SEQUENCE, {}).get("Value", []) or []:
        if isinstance(item, dict):
            uids.update(str(v) for v in item.get(_REFERENCED_SOP_INSTANCE, {}).get("Value", []) or [])
    return uids
