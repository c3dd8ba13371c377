"""FHIR R4 JSON built from the vault's views: CapabilityStatement, Media, Patient,
Binary, searchset Bundle and OperationOutcome (the mapping is documented in docs/fhir.md).

Resources are plain JSON objects (``dict``) in FHIR's own field names; the tests validate
each against the R4B models of ``fhir.resources`` (Media and the parts used here are
unchanged from R4).
"""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from typing import Any

from vault.fhir.service import MediaHits, MediaItem
from vault.patients.service import PatientView

FHIR_JSON = "application/fhir+json"
FHIR_VERSION = "4.0.1"
#: Patient.identifier.system of the clinic's external reference (the records system's MRN)
IDENTIFIER_SYSTEM = "urn:x-vault:external-ref"
#: extensions this server defines (docs/fhir.md)
EXT_THUMBNAIL = "urn:x-vault:fhir:StructureDefinition/media-thumbnail"
EXT_PHASE = "urn:x-vault:fhir:StructureDefinition/media-phase"
EXT_TREATMENT = "urn:x-vault:fhir:StructureDefinition/media-treatment"
MEDIA_TYPE_SYSTEM = "http://terminology.hl7.org/CodeSystem/media-type"
#: vault media status -> FHIR EventStatus
_STATUS = {"ready": "completed", "processing": "in-progress", "failed": "not-done"}
#: HTTP status -> OperationOutcome.issue.code (http://hl7.org/fhir/issue-type)
_ISSUE = {400: "invalid", 401: "login", 403: "forbidden", 404: "not-found", 405: "not-supported",
          406: "not-supported", 408: "timeout", 409: "conflict", 410: "deleted", 413: "too-costly",
          415: "not-supported", 416: "invalid", 422: "invalid", 429: "throttled", 503: "transient"}


def _instant(value: str | datetime) -> str:
    moment = datetime.fromisoformat(value) if isinstance(value, str) else value
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.isoformat()


def capability_statement(*, software_version: str, binary_json_limit: int) -> dict[str, Any]:
    read = [{"code": "read"}]
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": "2026-12-05",
        "kind": "instance",
        "software": {"name": "clinical photo vault", "version": software_version},
        "implementation": {"description": "Read-only FHIR R4 adapter of the clinical photo vault"},
        "fhirVersion": FHIR_VERSION,
        "format": [FHIR_JSON, "json"],
        "rest": [{
            "mode": "server",
            "documentation": ("Bearer tokens as for /v1; roles dpo, practitioner and records. Search by "
                              "identifier only by POST Media/_search (form body), never in a URL. Binary "
                              f"as application/fhir+json only for photos up to {binary_json_limit} bytes (406 above, and for videos)."),
            "security": {"cors": False, "description": "Authorization: Bearer <vault token>"},
            "resource": [
                {"type": "Media", "interaction": read + [{"code": "search-type"}],
                 "searchParam": [
                     {"name": "patient", "type": "reference", "documentation": "the vault's patient id (GET or POST)"},
                     {"name": "subject:Patient.identifier", "type": "token",
                      "documentation": f"{IDENTIFIER_SYSTEM}|MRN or MRN alone: POST Media/_search only"},
                     {"name": "_count", "type": "number"},
                     {"name": "_cursor", "type": "string", "documentation": "opaque: follow the Bundle's next link"},
                 ]},
                {"type": "Patient", "interaction": read},
                {"type": "Binary", "interaction": read},
            ],
        }],
    }


def _attachment(item: MediaItem) -> dict[str, Any]:
    view = item.view
    content: dict[str, Any] = {"contentType": view.mime, "url": f"Binary/{view.id}", "creation": _instant(view.created_at)}
    if item.original_size is not None:
        content["size"] = item.original_size
    return content


def media_resource(item: MediaItem) -> dict[str, Any]:
    view = item.view
    resource: dict[str, Any] = {
        "resourceType": "Media",
        "id": view.id,
        "meta": {"lastUpdated": _instant(view.updated_at)},
        "status": _STATUS.get(view.status, "unknown"),
        "type": {"coding": [{"system": MEDIA_TYPE_SYSTEM, "code": "image" if view.kind == "photo" else "video"}]},
        "subject": {"reference": f"Patient/{view.patient_id}"},
        "issued": _instant(view.created_at),
        "content": _attachment(item),
    }
    if view.width:
        resource["width"] = view.width
    if view.height:
        resource["height"] = view.height
    extensions: list[dict[str, Any]] = [{"url": EXT_PHASE, "valueCode": view.phase}]
    if view.treatment_id:
        extensions.append({"url": EXT_TREATMENT, "valueId": view.treatment_id})
    for size in item.thumbnails:
        extensions.append({"url": EXT_THUMBNAIL, "valueAttachment": {
            "contentType": "image/jpeg", "url": f"/v1/media/{view.id}/thumbnail?size={size}", "title": f"{size} px"}})
    resource["extension"] = extensions
    return resource


def searchset(hits: MediaHits, *, count: int) -> dict[str, Any]:
    """A searchset Bundle. Its links name the patient by the vault's id, never by identifier."""
    links = []
    if hits.patient_id is not None:
        links.append({"relation": "self", "url": f"Media?patient={hits.patient_id}&_count={count}"})
        if hits.next_cursor:
            links.append({"relation": "next",
                          "url": f"Media?patient={hits.patient_id}&_count={count}&_cursor={hits.next_cursor}"})
    else:
        links.append({"relation": "self", "url": "Media/_search"})
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "timestamp": _instant(datetime.now(UTC)),
        "link": links,
        "entry": [{"fullUrl": f"Media/{item.view.id}", "resource": media_resource(item), "search": {"mode": "match"}}
                  for item in hits.items],
    }


def patient_resource(view: PatientView, *, with_names: bool) -> dict[str, Any]:
    """The minimum the tenant holds: the records system's own identifier, and the name
    and birth date when the role may read them on ``GET /v1/patients/{id}``. Notes never."""
    resource: dict[str, Any] = {
        "resourceType": "Patient",
        "id": view.id,
        "meta": {"lastUpdated": _instant(view.updated_at)},
        "active": view.status != "erased",  # restricted records are still in use
    }
    if view.external_ref:
        resource["identifier"] = [{"use": "usual", "system": IDENTIFIER_SYSTEM, "value": view.external_ref}]
    if with_names:
        if view.display_name:
            resource["name"] = [{"text": view.display_name}]
        if view.date_of_birth:
            resource["birthDate"] = view.date_of_birth.isoformat()
    return resource


def binary_resource(media_id: str, mime: str, data: bytes) -> dict[str, Any]:
    return {"resourceType": "Binary", "id": media_id, "contentType": mime, "data": base64.b64encode(data).decode()}


def operation_outcome(status: int, code: str, message: str) -> dict[str, Any]:
    """An error as FHIR OperationOutcome; ``code`` (the vault's error code) is kept in ``details``."""
    severity = "fatal" if status >= 500 else "error"
    issue_type = _ISSUE.get(status, "exception" if status >= 500 else "processing")
    return {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": severity, "code": issue_type, "details": {"text": code}, "diagnostics": message}],
    }
