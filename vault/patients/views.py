"""HTTP layer of the patients domain: its routes, its typed key and its ``setup(app)``."""

from __future__ import annotations

from datetime import date
from typing import Annotated

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from vault.appkeys import RUNTIME, SETTINGS
from vault.http.context import actor_of
from vault.http.jsonio import json_response, parse_query, read_json
from vault.http.routing import Endpoints, add_endpoints
from vault.patients.service import PatientService, PatientView

routes = Endpoints("patients")
PATIENTS = web.AppKey("patients", PatientService)


def setup(app: web.Application) -> None:
    add_endpoints(app, routes)
    app.on_startup.append(_bind)


async def _bind(app: web.Application) -> None:
    app[PATIENTS] = app[RUNTIME].patients

Ref = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=128)]
Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
Notes = Annotated[str, StringConstraints(max_length=4000)]


class PatientCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    external_ref: Ref
    display_name: Name | None = None
    date_of_birth: date | None = None
    notes: Notes | None = None


class PatientPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    external_ref: Ref | None = None
    display_name: Name | None = None
    date_of_birth: date | None = None
    notes: Notes | None = None


class PatientQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")
    external_ref: Ref | None = None
    cursor: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{32}$")] | None = None
    limit: int = Field(default=50, ge=1, le=200)


class PatientOut(BaseModel):
    id: str
    status: str
    external_ref: str | None
    display_name: str | None
    date_of_birth: date | None
    notes: str | None
    created_at: str
    updated_at: str

    @classmethod
    def of(cls, view: PatientView) -> PatientOut:
        return cls(id=view.id, status=view.status, external_ref=view.external_ref, display_name=view.display_name,
                   date_of_birth=view.date_of_birth, notes=view.notes, created_at=view.created_at.isoformat(),
                   updated_at=view.updated_at.isoformat())


class PatientPage(BaseModel):
    items: list[PatientOut]
    next_cursor: str | None


@routes.post("/v1/patients", summary="Create a patient", body=PatientCreate, status=201, response=PatientOut, errors=(409, 422))
async def create_patient(request: web.Request) -> web.Response:
    body = await read_json(request, PatientCreate, limit=request.app[SETTINGS].max_json_bytes)
    view = await request.app[PATIENTS].create(actor_of(request), **body.model_dump())
    out = PatientOut.of(view)
    return json_response(out, status=201, headers={"Location": f"/v1/patients/{out.id}"})


@routes.get("/v1/patients", summary="Find a patient by external_ref, or page through patients", query=PatientQuery,
            response=PatientPage)
async def list_patients(request: web.Request) -> web.Response:
    query = parse_query(request, PatientQuery)
    service = request.app[PATIENTS]
    if query.external_ref is not None:
        items, next_cursor = await service.find(actor_of(request), query.external_ref), None
    else:
        items, next_cursor = await service.page(actor_of(request), cursor=query.cursor, limit=query.limit)
    return json_response(PatientPage(items=[PatientOut.of(v) for v in items], next_cursor=next_cursor))


class PatientSearch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    external_ref: Ref


@routes.post("/v1/patients/search", summary="Find a patient by external_ref, sent in the body (kept out of URLs and logs)",
             body=PatientSearch, response=PatientPage, errors=(422,))
async def search_patients(request: web.Request) -> web.Response:
    body = await read_json(request, PatientSearch, limit=request.app[SETTINGS].max_json_bytes)
    items = await request.app[PATIENTS].find(actor_of(request), body.external_ref)
    return json_response(PatientPage(items=[PatientOut.of(v) for v in items], next_cursor=None))


@routes.get("/v1/patients/{patient_id}", summary="Read a patient", response=PatientOut, errors=(404, 410))
async def get_patient(request: web.Request) -> web.Response:
    view = await request.app[PATIENTS].get(actor_of(request), request.match_info["patient_id"])
    return json_response(PatientOut.of(view))


@routes.patch("/v1/patients/{patient_id}", summary="Rectify a patient's fields", body=PatientPatch, response=PatientOut, errors=(404, 409, 410, 422))
async def patch_patient(request: web.Request) -> web.Response:
    body = await read_json(request, PatientPatch, limit=request.app[SETTINGS].max_json_bytes)
    changes = body.model_dump(exclude_unset=True)
    if changes.get("external_ref", "") is None:
        changes.pop("external_ref")  # the reference can be changed, never removed
    view = await request.app[PATIENTS].update(actor_of(request), request.match_info["patient_id"], changes)
    return json_response(PatientOut.of(view))
