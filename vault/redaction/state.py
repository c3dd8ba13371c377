"""What a redaction is made of, and the gate's inputs that depend on it.

The digest a person approves covers everything that decides the pixels that go out:
the stored original (its keyed HMAC: :func:`original_hmac`), its EXIF orientation, the final fill rectangles (after
the margin, clipped to the displayed frame), the renderer's version and the detector
set's version. Any change to one of them gives another digest, so an approval binds
exactly what the reviewer saw and voids itself on any change — including a new detector
run or a new renderer.

:func:`detected` is the one place that reads the detector's findings off the media row.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from vault.consent import gate
from vault.consent.service import facts_of
from vault.media.faces import detection_summary
from vault.media.models import ORIGINAL, Media, MediaBlob
from vault.pipeline.renderer import RENDERER_VERSION
from vault.redaction.models import REVIEW, Redaction, RedactionApproval, ReleasePolicy

if TYPE_CHECKING:
    from keys.store import KeyStore

#: Extra growth of the detector's boxes here: none, since the face search stores them
#: already grown by its margin (vault.pipeline.faces_search.MARGIN: hair line, ears, chin);
#: a reviewer's boxes are filled exactly as drawn.
DETECTOR_MARGIN = 0.0
RENDITION_FULL, RENDITION_THUMB = "redacted", "redacted256"
DIGEST_VERSION = "redaction-digest/v2"  # v2: the original by its keyed HMAC (migration 0022)
#: The purpose key (KeyStore.purpose_hmac, docs/keys.md) that names a stored original here.
ORIGINAL_PURPOSE = "redaction.original"


@dataclass(frozen=True, slots=True)
class Detected:
    boxes: list[list[int]]  # [x, y, w, h], displayed coordinates, as the detector stored them
    version: str  # the detector set's version


def detected(media: Media) -> Detected:
    """The detector's boxes and version for ``media``, through the one summary of the
    face search (:func:`vault.media.faces.detection_summary`)."""
    summary = detection_summary(media)
    return Detected(boxes=[list(box) for box in summary.boxes], version=summary.detector_version or "")


def clip(boxes: Iterable[Sequence[int]], width: int, height: int, *, margin: float = 0.0) -> list[list[int]]:
    """Boxes grown by ``margin`` on every side, rounded outward, clipped to the frame;
    empty ones dropped. Sorted, so the same set always gives the same digest."""
    rects = set()
    for x, y, w, h in boxes:
        dx, dy = w * margin, h * margin
        left, top = max(0, math.floor(x - dx)), max(0, math.floor(y - dy))
        right, bottom = min(width, math.ceil(x + w + dx)), min(height, math.ceil(y + h + dy))
        if right > left and bottom > top:
            rects.add((left, top, right - left, bottom - top))
    return [list(r) for r in sorted(rects)]


def fill_rects(media: Media, redaction: Redaction | None) -> tuple[list[list[int]], str]:
    """The final fill rectangles and where they come from (``reviewer`` or ``detector``)."""
    width, height = media.width or 0, media.height or 0
    if redaction is not None and redaction.boxes is not None:
        return clip(json.loads(redaction.boxes), width, height), "reviewer"
    return clip(detected(media).boxes, width, height, margin=DETECTOR_MARGIN), "detector"


async def original_hmac(keys: KeyStore, tenant_id: str, data: bytes) -> str:
    """The stored original's name in the redaction's facts: HMAC-SHA256 (under the tenant's
    long-lived ``redaction.original`` key) of its SHA-256. A plain hash would let anyone
    with the metadata confirm a guessed photo; this needs the key."""
    return await keys.purpose_hmac(tenant_id, ORIGINAL_PURPOSE, hashlib.sha256(data).hexdigest())


def digest_of(*, original_hmac: str, orientation: int, rects: list[list[int]], detector_version: str) -> str:
    payload = {"v": DIGEST_VERSION, "original_hmac": original_hmac, "orientation": orientation, "rects": rects,
               "renderer": RENDERER_VERSION, "detector": detector_version}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def current_digest(media: Media, redaction: Redaction | None, original_blob_id: str | None) -> str | None:
    """The digest of the redaction as it is now, or None while the original's facts are
    unknown (never read since the row was made) or stale (another original)."""
    if (redaction is None or redaction.original_hmac is None or redaction.orientation is None
            or redaction.original_blob_id != original_blob_id):
        return None
    rects, _ = fill_rects(media, redaction)
    return digest_of(original_hmac=redaction.original_hmac, orientation=redaction.orientation, rects=rects,
                     detector_version=detected(media).version)


async def policy_of(session: AsyncSession, tenant_id: str) -> str:
    row = await session.get(ReleasePolicy, tenant_id)
    return row.deidentified if row is not None else REVIEW


@dataclass(frozen=True, slots=True)
class ReviewState:
    """One photo's redaction state as the release paths need it."""

    redaction: Redaction | None
    approval: RedactionApproval | None  # the approval that holds now, if any
    digest: str | None


async def review_states(session: AsyncSession, media: Sequence[Media]) -> dict[str, ReviewState]:
    """Each photo's redaction row, current digest and valid approval (three queries)."""
    ids = [m.id for m in media if m.kind == "photo"]
    if not ids:
        return {}
    redactions = {r.media_id: r for r in (await session.execute(select(Redaction).where(Redaction.media_id.in_(ids)))).scalars()}
    approval_ids = [r.approval_id for r in redactions.values() if r.approval_id]
    approvals = {}
    if approval_ids:
        approvals = {a.id: a for a in (await session.execute(
            select(RedactionApproval).where(RedactionApproval.id.in_(approval_ids), RedactionApproval.voided_at.is_(None))
        )).scalars()}
    originals: dict[str, str] = {}
    if redactions:
        rows = await session.execute(
            select(MediaBlob.media_id, MediaBlob.id).where(MediaBlob.media_id.in_(list(redactions)), MediaBlob.rendition == ORIGINAL))
        originals = {media_id: blob_id for media_id, blob_id in rows}
    states = {}
    for m in media:
        redaction = redactions.get(m.id)
        digest = current_digest(m, redaction, originals.get(m.id))
        approval = approvals.get(redaction.approval_id or "") if redaction is not None else None
        if approval is not None and (digest is None or approval.digest != digest or approval.media_id != m.id):
            approval = None  # something changed since: it no longer holds
        states[m.id] = ReviewState(redaction=redaction, approval=approval, digest=digest)
    return states


async def gate_facts(session: AsyncSession, tenant_id: str, media: Sequence[Media]) -> dict[str, tuple[gate.MediaFacts, ReviewState]]:
    """The gate's facts for each media under the tenant's release policy, with the
    redaction state they were made from (a release uses the approval named there)."""
    review = await policy_of(session, tenant_id) == REVIEW
    states = await review_states(session, media)
    empty = ReviewState(redaction=None, approval=None, digest=None)
    out = {}
    for m in media:
        state = states.get(m.id, empty)
        out[m.id] = (facts_of(m, review_required=review, redaction_approved=state.approval is not None), state)
    return out


async def forget(session: AsyncSession, *, patient_id: str | None = None, media_id: str | None = None) -> None:
    """After an erasure (of a patient or one photo): drop the redaction rows, which hold a
    keyed digest of the stripped original. Approvals keep only rectangles and their digest; the
    redacted renditions are media blobs and go with the others."""
    query = delete(Redaction)
    if media_id is not None:
        query = query.where(Redaction.media_id == media_id)
    elif patient_id is not None:
        query = query.where(Redaction.patient_id == patient_id)
    else:
        raise ValueError("forget needs a patient or a media")
    await session.execute(query)
