"""Stable DICOM UIDs that leak no id.

A UID is ``2.25.<decimal>`` (PS3.5 B.2, ISO/IEC 9834-8): the decimal form of a 128-bit
UUID, here a version-8 (RFC 9562 "custom") UUID whose bits are a keyed HMAC under the
tenant's ``dicom-uid`` purpose key (docs/keys.md) of what the UID stands for. So the
same treatment always gives the same Study Instance UID (a second export lands in the
same study), the same photo the same SOP Instance UID (a re-sent instance replaces itself
instead of doubling), while nobody without the key can tell which vault ids they name.
"""

from __future__ import annotations

PURPOSE = "dicom-uid"


def uid_from_digest(hex_digest: str) -> str:
    raw = bytearray(bytes.fromhex(hex_digest)[:16])
    raw[6] = (raw[6] & 0x0F) | 0x80  # version 8
    raw[8] = (raw[8] & 0x3F) | 0x80  # the RFC 9562 variant
    return "2.25." + str(int.from_bytes(raw, "big"))


async def derive(keys, tenant_id: str, *parts: str) -> str:
    """The UID of ``parts`` (e.g. ``("study", treatment_id)``) in this tenant."""
    return uid_from_digest(await keys.purpose_hmac(tenant_id, PURPOSE, "|".join(parts)))
