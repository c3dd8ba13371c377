"""Who may do what: the one declarative table that decides access by role.

Every route the service registers must appear here (a test enforces it); a route
missing from the table is refused to every role. Access is decided in this order:
role (403, here), then tenant and ownership (404, in the domain services), then
the consent gate. ``vault permissions`` prints the table; ``vault permissions
--markdown`` prints the whole of docs/permissions.md (:func:`markdown_document`), and
tests/test_permissions_doc.py fails when the checked-in file differs from it.
"""

from __future__ import annotations

from enum import StrEnum


class Role(StrEnum):
    ADMIN = "admin"
    DPO = "dpo"
    PRACTITIONER = "practitioner"
    RECORDS = "records"
    MARKETING = "marketing"
    ERASURE = "erasure"
    AUDITOR = "auditor"


ROLES = tuple(Role)
A, D, P, R, M, E, U = (
    Role.ADMIN,
    Role.DPO,
    Role.PRACTITIONER,
    Role.RECORDS,
    Role.MARKETING,
    Role.ERASURE,
    Role.AUDITOR,
)

PUBLIC = "public"

#: (method, route template) -> roles allowed, or PUBLIC for unauthenticated routes.
PERMISSIONS: dict[tuple[str, str], frozenset[Role] | str] = {
    ("GET", "/healthz"): PUBLIC,
    ("GET", "/readyz"): PUBLIC,
    ("GET", "/metrics"): PUBLIC,
    ("GET", "/v1/openapi.json"): PUBLIC,
    ("GET", "/docs"): PUBLIC,  # the rendered reference (vault/http/reference.py)
    ("GET", "/docs/redoc.standalone.js"): PUBLIC,
    ("GET", "/docs/reference.js"): PUBLIC,
    ("GET", "/docs/errors"): PUBLIC,
    ("GET", "/v1/erasure-receipts/public-key"): PUBLIC,
    # patients
    ("POST", "/v1/patients"): frozenset({D, P}),
    ("GET", "/v1/patients"): frozenset({D, P, R}),
    ("POST", "/v1/patients/search"): frozenset({D, P, R}),  # the GET's twin: the hospital number in the body
    ("GET", "/v1/patients/{patient_id}"): frozenset({D, P, R}),
    ("PATCH", "/v1/patients/{patient_id}"): frozenset({D, P}),
    # treatments and media
    ("POST", "/v1/patients/{patient_id}/treatments"): frozenset({P}),
    ("GET", "/v1/patients/{patient_id}/treatments"): frozenset({D, P, R}),
    # the treatment-type vocabulary names no one: marketing filters the gallery by it
    ("GET", "/v1/treatment-types"): frozenset({A, D, P, M}),
    ("PUT", "/v1/treatment-types"): frozenset({A, D}),
    ("POST", "/v1/patients/{patient_id}/media"): frozenset({P}),
    ("GET", "/v1/patients/{patient_id}/media"): frozenset({D, P, R}),
    ("GET", "/v1/media/{media_id}"): frozenset({D, P, R}),
    ("PATCH", "/v1/media/{media_id}"): frozenset({D, P}),
    ("DELETE", "/v1/media/{media_id}"): frozenset({D}),
    ("GET", "/v1/media/{media_id}/content"): frozenset({D, P, R}),
    ("GET", "/v1/media/{media_id}/thumbnail"): frozenset({D, P, R}),
    ("POST", "/v1/media/{media_id}/playback"): frozenset({D, P, R}),
    # a <video> element cannot send a bearer header: the signed link (bound to the media
    # and to the token that asked for it, which must still hold a role above) authorises
    ("GET", "/v1/playback/{media_id}"): PUBLIC,
    # consent and release
    ("POST", "/v1/patients/{patient_id}/consents"): frozenset({D, P}),
    ("GET", "/v1/patients/{patient_id}/consents"): frozenset({D, P}),
    ("POST", "/v1/consents/{consent_id}/withdraw"): frozenset({D, P}),
    ("GET", "/v1/consents/{consent_id}/evidence"): frozenset({D, P}),
    ("GET", "/v1/releasable"): frozenset({M}),
    ("POST", "/v1/releasable/search"): frozenset({M}),
    # no bearer (an <img> cannot send one): the signed URL is the authorisation (vault/signedurls.py)
    ("GET", "/v1/releasable/{media_id}/thumbnail"): PUBLIC,
    ("POST", "/v1/media/{media_id}/releases"): frozenset({M}),
    ("POST", "/v1/releases/composites"): frozenset({M}),
    ("GET", "/v1/releases/{release_id}/download"): frozenset({M}),
    ("GET", "/v1/releases"): frozenset({D, M}),
    ("POST", "/v1/releases/{release_id}/takedown"): frozenset({D, M}),
    # redaction review (a person approves every de-identified release under policy "review")
    ("GET", "/v1/release-policy"): frozenset({D}),
    ("PUT", "/v1/release-policy"): frozenset({D}),
    ("GET", "/v1/redaction-reviews"): frozenset({D, P}),
    ("GET", "/v1/media/{media_id}/redaction"): frozenset({D, P}),
    ("PUT", "/v1/media/{media_id}/redaction"): frozenset({D, P}),
    ("POST", "/v1/media/{media_id}/redaction/approve"): frozenset({D, P}),
    ("GET", "/v1/media/{media_id}/redaction/preview"): frozenset({D, P}),
    # DICOM export to the clinic's PACS (docs/integration.md)
    ("POST", "/v1/media/{media_id}/dicom-exports"): frozenset({D, P}),
    ("GET", "/v1/dicom-exports/{dicom_export_id}"): frozenset({D, P}),
    # lifecycle
    ("POST", "/v1/patients/{patient_id}/erasure"): frozenset({D, E}),
    ("GET", "/v1/erasure-receipts/{receipt_id}/finality"): frozenset({D, E}),
    ("PUT", "/v1/patients/{patient_id}/legal-hold"): frozenset({D}),
    ("DELETE", "/v1/patients/{patient_id}/legal-hold"): frozenset({D}),
    ("PUT", "/v1/patients/{patient_id}/restriction"): frozenset({D}),
    ("DELETE", "/v1/patients/{patient_id}/restriction"): frozenset({D}),
    ("POST", "/v1/patients/{patient_id}/exports"): frozenset({D}),
    ("GET", "/v1/exports/{export_id}"): frozenset({D}),
    ("GET", "/v1/exports/{export_id}/download"): frozenset({D}),
    ("GET", "/v1/retention-policy"): frozenset({A, D}),
    ("PUT", "/v1/retention-policy"): frozenset({D}),
    ("POST", "/v1/retention/sweep"): frozenset({D}),
    ("GET", "/v1/retention/sweeps/{sweep_id}"): frozenset({D}),
    ("GET", "/v1/webhooks"): frozenset({A}),
    ("PUT", "/v1/webhooks"): frozenset({A}),
    # audit
    ("GET", "/v1/audit"): frozenset({D, U}),
    ("GET", "/v1/audit/verify"): frozenset({D, U}),
    # tokens (created on the command line only)
    ("DELETE", "/v1/tokens/{token_id}"): frozenset({A}),
    # the staff web app (docs/staff.md): pages and their forms, decided here like the API.
    # Login, its second factor, enrolment and the static files need no session.
    ("GET", "/"): PUBLIC,
    ("POST", "/"): PUBLIC,
    ("GET", "/login/code"): PUBLIC,
    ("POST", "/login/code"): PUBLIC,
    ("GET", "/enrol/{token}"): PUBLIC,
    ("POST", "/enrol/{token}"): PUBLIC,
    ("GET", "/static/{name}"): PUBLIC,
    ("GET", "/app/"): frozenset(ROLES),
    ("POST", "/app/logout"): frozenset(ROLES),
    ("GET", "/app/patients"): frozenset({D, P, R}),
    ("POST", "/app/patients"): frozenset({D, P, R}),
    ("GET", "/app/patients/{patient_id}"): frozenset({D, P, R}),
    ("POST", "/app/patients/{patient_id}"): frozenset({D, P}),
    ("POST", "/app/patients/{patient_id}/legal-hold"): frozenset({D}),
    ("POST", "/app/patients/{patient_id}/restriction"): frozenset({D}),
    ("POST", "/app/patients/{patient_id}/consents"): frozenset({D, P}),
    ("POST", "/app/consents/{consent_id}/withdraw"): frozenset({D, P}),
    ("GET", "/app/patients/{patient_id}/erasure"): frozenset({D}),
    ("POST", "/app/patients/{patient_id}/erasure"): frozenset({D}),
    ("POST", "/app/patients/{patient_id}/exports"): frozenset({D}),
    ("GET", "/app/exports/{export_id}"): frozenset({D}),
    ("POST", "/app/exports/{export_id}/download"): frozenset({D}),
    ("GET", "/app/patients/{patient_id}/timeline"): frozenset({D, P, R}),
    ("GET", "/app/patients/{patient_id}/capture"): frozenset({P}),
    ("POST", "/app/patients/{patient_id}/treatments"): frozenset({P}),
    ("GET", "/app/patients/{patient_id}/compare"): frozenset({D, P, R}),
    ("POST", "/app/media/{media_id}/face-review"): frozenset({D, P}),
    ("GET", "/app/retention"): frozenset({A, D}),
    ("POST", "/app/retention"): frozenset({D}),
    ("POST", "/app/retention/dry-run"): frozenset({D}),
    ("POST", "/app/retention/sweep"): frozenset({D}),
    ("GET", "/app/retention/sweeps/{sweep_id}"): frozenset({D}),
    ("GET", "/app/audit"): frozenset({D, U}),
    ("POST", "/app/audit/verify"): frozenset({D, U}),
    ("GET", "/app/webhooks"): frozenset({A}),
    ("POST", "/app/webhooks"): frozenset({A}),
    ("GET", "/app/redaction"): frozenset({D, P}),
    ("GET", "/app/redaction/{media_id}"): frozenset({D, P}),
    ("GET", "/app/gallery"): frozenset({M}),
    ("POST", "/app/gallery"): frozenset({M}),
    ("POST", "/app/gallery/releases"): frozenset({M}),
    ("POST", "/app/gallery/composites"): frozenset({M}),
    ("POST", "/app/releases/{release_id}/download"): frozenset({M}),
    ("GET", "/app/recalls"): frozenset({D, M}),
    ("POST", "/app/releases/{release_id}/takedown"): frozenset({D, M}),
    ("GET", "/app/staff"): frozenset({A}),
    ("POST", "/app/staff"): frozenset({A}),
    ("POST", "/app/staff/{staff_id}/disable"): frozenset({A}),
    ("POST", "/app/staff/{staff_id}/reset"): frozenset({A}),
    # FHIR R4 read-only (docs/fhir.md): the roles that read patients and media on /v1;
    # the CapabilityStatement describes the server, not any clinic
    ("GET", "/fhir/R4/metadata"): PUBLIC,
    ("GET", "/fhir/R4/Media"): frozenset({D, P, R}),
    ("POST", "/fhir/R4/Media/_search"): frozenset({D, P, R}),
    ("GET", "/fhir/R4/Media/{media_id}"): frozenset({D, P, R}),
    ("GET", "/fhir/R4/Binary/{media_id}"): frozenset({D, P, R}),
    ("GET", "/fhir/R4/Patient/{patient_id}"): frozenset({D, P, R}),
}


def allowed(method: str, template: str) -> frozenset[Role] | str | None:
    """Roles allowed on a route, PUBLIC, or None when the route is not in the table."""
    return PERMISSIONS.get(("GET" if method == "HEAD" else method, template))


def markdown_table() -> str:
    """The table as Markdown, one row per route, one column per role."""
    lines = ["| method | route | " + " | ".join(ROLES) + " |", "|---|---|" + "---|" * len(ROLES)]
    for (method, path), roles in PERMISSIONS.items():
        if roles == PUBLIC:
            cells = ["public"] + [""] * (len(ROLES) - 1)
        else:
            cells = ["✓" if role in roles else "" for role in ROLES]
        lines.append(f"| {method} | `{path}` | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


_INTRO = """\
# Who may do what

Generated from `vault/permissions.py` by `vault permissions --markdown > docs/permissions.md`
— the one place access by role is decided; a test fails when this file and the table
differ. Access is decided in this order: role (403), then tenant and ownership (404:
another clinic's resource never shows it exists), then the consent gate. A route missing
from the table is refused to every role, and a test walks every registered route × role ×
own/other tenant against this table.

`admin` configures the tenant and never reads patient data. Tokens are created by
operators on the command line (`vault token create`), each naming a person or system.
Routes marked `public` take no role: health, readiness, the OpenAPI document and its rendered reference (`/docs`), the FHIR
CapabilityStatement and the receipts' public key; `/metrics` (its own token, `VAULT_METRICS_TOKEN`); signed links,
whose signature is the authorisation (release thumbnails, video playback); and the web app's
login, second-factor and enrolment forms and its static files.

People log in to the web app (`/`, pages under `/app/`) with a staff account holding one of
these roles (docs/staff.md): its session cookie resolves to the same principal as a token,
so every page and every `/v1` call it makes is decided by this same table, then by tenant
and ownership, then by the consent gate.

"""


def markdown_document() -> str:
    """docs/permissions.md: what the table means, then the table."""
    return _INTRO + markdown_table()
