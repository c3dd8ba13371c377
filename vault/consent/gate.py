"""The consent gate: the one function that decides release for a secondary purpose.

``decide`` is pure: small frozen values in, a :class:`Decision` out; no database, no
clock, no I/O. Every release path (the releasable listing, its signed thumbnails, the
release itself and its download) builds the inputs and calls it, and nothing else
decides release. The rules, in the order they are applied (first match answers):

1. unknown purpose                                  -> deny ``unknown_purpose``
2. patient erased / restricted                      -> deny ``patient_erased`` / ``patient_restricted``
3. media not ``ready``                              -> deny ``media_not_ready``
4. among the events of this patient that cover the media for the purpose and were
   recorded by ``now``, the newest decides ("newest covering statement wins"):
   none                                             -> deny ``no_consent``
   a withdrawal                                     -> deny ``withdrawn``
   a grant expired at ``now``                       -> deny ``expired``
   an identifiable grant                            -> allow (the stripped original)
5. a de-identified grant:
   video                                            -> deny ``video_not_deidentifiable``
   full-resolution face search still ``pending``    -> deny ``needs_review``
   a reviewer marked the photo identifiable         -> deny ``needs_review``
   policy ``review`` (the default):
     an approval holds for the current redaction    -> allow_deidentified (the approved rectangles)
     otherwise                                      -> deny ``needs_review``
   policy ``auto``:
     a reviewer marked it not identifiable          -> allow_deidentified
     face assumed, or flagged without boxes         -> deny ``needs_review``
     face detected with boxes                       -> allow_deidentified (boxes filled)
     no face found by a detector that ran           -> allow_deidentified (a fresh re-encode)

Why "newest covering statement" across scopes (patient / treatment / listed media) rather
than "most specific scope": a patient who withdraws everything after consenting to one
listed photo must see that photo withdrawn too; and a later, narrower statement (one
photo de-identified only) must override an earlier broad identifiable one. Equal
``recorded_at`` resolves to the more restrictive event (withdrawal, then de-identified).

A de-identified release is never the stripped original, even for a face-free photo: it is
a fresh JPEG re-encode (see ``docs/consent.md``), so nothing of the original container
(ICC and other allow-listed chunks, the original format) goes out under a promise of
de-identification, and whatever boxes exist are filled.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

PURPOSES = ("education", "social_media", "marketing", "publication")
GRANT, WITHDRAWAL = "grant", "withdrawal"
SCOPE_PATIENT, SCOPE_TREATMENT, SCOPE_MEDIA = "patient", "treatment", "media"
SCOPES = (SCOPE_PATIENT, SCOPE_TREATMENT, SCOPE_MEDIA)

ALLOW, ALLOW_DEIDENTIFIED, DENY = "allow", "allow_deidentified", "deny"
ORIGINAL, DEIDENTIFIED = "original", "deidentified"

#: why the gate answered as it did (the ``reason`` of a Decision)
REASONS = (
    "identifiable_consent",
    "deidentified_consent",
    "unknown_purpose",
    "patient_erased",
    "patient_restricted",
    "media_not_ready",
    "no_consent",
    "withdrawn",
    "expired",
    "video_not_deidentifiable",
    "needs_review",
)


@dataclass(frozen=True, slots=True, kw_only=True)
class MediaFacts:
    """What the gate needs to know about one photo or video."""

    media_id: str
    patient_id: str
    treatment_id: str | None
    kind: str  # "photo" | "video"
    status: str  # "processing" | "ready" | "failed"
    faces_detected: bool
    face_boxes: tuple[tuple[int, int, int, int], ...] = ()
    faces_assumed: bool = False  # no detector ran: a face is assumed, location unknown
    face_review: str | None = None  # "identifiable" | "not_identifiable" | None
    #: the tenant's release policy is ``review``: a person's approval must bind the redaction
    review_required: bool = False
    #: an approval holds for the redaction as it is now (its digest unchanged since)
    redaction_approved: bool = False

    #: the full-resolution search: "pending" (not finished) | "searched" | "incomplete" (a bound hit)
    faces_state: str = "searched"


@dataclass(frozen=True, slots=True, kw_only=True)
class ConsentEvent:
    """One append-only consent event (a grant or a withdrawal) as the gate sees it."""

    id: str
    patient_id: str
    kind: str  # GRANT | WITHDRAWAL
    purposes: frozenset[str]
    scope: str  # SCOPE_PATIENT | SCOPE_TREATMENT | SCOPE_MEDIA
    recorded_at: datetime
    identifiable: bool = False
    treatment_id: str | None = None
    media_ids: frozenset[str] = frozenset()
    expires_at: datetime | None = None

    def covers(self, media: MediaFacts, purpose: str) -> bool:
        if self.patient_id != media.patient_id or purpose not in self.purposes:
            return False
        if self.scope == SCOPE_PATIENT:
            return True
        if self.scope == SCOPE_TREATMENT:
            return self.treatment_id is not None and self.treatment_id == media.treatment_id
        if self.scope == SCOPE_MEDIA:
            return media.media_id in self.media_ids
        return False


@dataclass(frozen=True, slots=True)
class Decision:
    outcome: str  # ALLOW | ALLOW_DEIDENTIFIED | DENY
    reason: str
    consent_id: str | None = None  # the event that decided (None when no event did)

    @property
    def allowed(self) -> bool:
        return self.outcome != DENY

    @property
    def rendition(self) -> str | None:
        """The rendition a release under this decision gets, or None when denied."""
        return {ALLOW: ORIGINAL, ALLOW_DEIDENTIFIED: DEIDENTIFIED}.get(self.outcome)


def _deny(reason: str, consent_id: str | None = None) -> Decision:
    return Decision(DENY, reason, consent_id)


def _precedence(event: ConsentEvent) -> tuple[datetime, int, str]:
    # At equal times the more restrictive event counts as newer; the id only makes it total.
    rank = 2 if event.kind == WITHDRAWAL else (0 if event.identifiable else 1)
    return event.recorded_at, rank, event.id


def decide(
    media: MediaFacts, purpose: str, now: datetime, events: Iterable[ConsentEvent], patient_status: str
) -> Decision:
    """allow / allow_deidentified / deny, with the reason. ``now`` must be timezone-aware."""
    if purpose not in PURPOSES:
        return _deny("unknown_purpose")
    if patient_status == "erased":
        return _deny("patient_erased")
    if patient_status != "active":
        return _deny("patient_restricted")  # restricted, or any status we do not know
    if media.status != "ready":
        return _deny("media_not_ready")
    covering = [e for e in events if e.recorded_at <= now and e.covers(media, purpose)]
    if not covering:
        return _deny("no_consent")
    newest = max(covering, key=_precedence)
    if newest.kind != GRANT:
        return _deny("withdrawn", newest.id)
    if newest.expires_at is not None and newest.expires_at <= now:
        return _deny("expired", newest.id)
    if newest.identifiable:
        return Decision(ALLOW, "identifiable_consent", newest.id)
    return _deidentified(media, newest.id)


def _deidentified(media: MediaFacts, consent_id: str) -> Decision:
    if media.kind != "photo":
        return _deny("video_not_deidentifiable", consent_id)
    if media.faces_state == "pending":  # the full-resolution search has not finished
        return _deny("needs_review", consent_id)
    if media.face_review == "identifiable":
        # A person judged it identifiable: the detector's boxes may not hold what identifies.
        return _deny("needs_review", consent_id)
    if media.review_required:
        # Policy ``review``: only a person's approval of the exact rectangles opens release;
        # neither the detector's boxes nor a "not identifiable" flag is enough.
        if media.redaction_approved:
            return Decision(ALLOW_DEIDENTIFIED, "deidentified_consent", consent_id)
        return _deny("needs_review", consent_id)
    if media.face_review == "not_identifiable":
        return Decision(ALLOW_DEIDENTIFIED, "deidentified_consent", consent_id)
    if media.faces_assumed or (media.faces_detected and not media.face_boxes):
        return _deny("needs_review", consent_id)
    return Decision(ALLOW_DEIDENTIFIED, "deidentified_consent", consent_id)
