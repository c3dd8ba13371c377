from __future__ import annotations

from datetime import date
from typing import Annotated

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from vault.appkeys import PATIENTS, SETTINGS
from vault.http.context import actor_of
from vault.http.jsonio import json_response, parse_query, read_json
from vault.http.routing import Endpoints

routes = Endpoints("patients")

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


@routes.post("/v1/patients", summary="Create a patient", body=PatientCreate, status=201, response=PatientOut, errors=(409, 422))
async def create_patient(request: web.Request) -> web.Response:
    body = await read_json(request, PatientCreate, limit=request.app[SETTINGS].max_json_bytes)
    view = await request.app[PATIENTS].create(actor_of(request), **body.model_dump())
    return json_response(view.as_dict(), status=201)


@routes.get("/v1/patients", summary="Find a patient by external_ref, or page through patients", query=PatientQuery)
async def list_patients(request: web.Request) -> web.Response:
    query = parse_query(request, PatientQuery)
    service = request.app[PATIENTS]
    if query.external_ref is not None:
        items, next_cursor = await service.find(actor_of(request), query.external_ref), None
    else:
        items, next_cursor = await service.page(actor_of(request), cursor=query.cursor, limit=query.limit)
    return json_response({"items": [v.as_dict() for v in items], "next_cursor": next_cursor})


@routes.get("/v1/patients/{patient_id}", summary="Read a patient", response=PatientOut, errors=(404, 410))
async def get_patient(request: web.Request) -> web.Response:
    view = await request.app[PATIENTS].get(actor_of(request), request.match_info["patient_id"])
    return json_response(view.as_dict())


@routes.patch("/v1/patients/{patient_id}", summary="Rectify a patient's fields", body=PatientPatch, response=PatientOut, errors=(404, 409, 410, 422))
async def patch_patient(request: web.Request) -> web.Response:
    body = await read_json(request, PatientPatch, limit=request.app[SETTINGS].max_json_bytes)
    changes = body.model_dump(exclude_unset=True)
    if changes.get("external_ref", "") is None:
        changes.pop("external_ref")  # the reference can be changed, never removed
    view = await request.app[PATIENTS].update(actor_of(request), request.match_info["patient_id"], changes)
    return json_response(view.as_dict())
