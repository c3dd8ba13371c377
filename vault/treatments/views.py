"""HTTP layer of the treatments domain: its routes, its typed key and its ``setup(app)``."""

from __future__ import annotations

from datetime import date
from typing import Annotated

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from vault.appkeys import RUNTIME, SETTINGS
from vault.http.context import actor_of
from vault.http.jsonio import json_response, read_json
from vault.http.routing import Endpoints, add_endpoints
from vault.treatments.service import TreatmentService, TreatmentView, TypeView

routes = Endpoints("treatments")
TREATMENTS = web.AppKey("treatments", TreatmentService)


def setup(app: web.Application) -> None:
    add_endpoints(app, routes)
    app.on_startup.append(_bind)


async def _bind(app: web.Application) -> None:
    app[TREATMENTS] = app[RUNTIME].treatments


class TreatmentCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
    performed_on: date
    area: Annotated[str, StringConstraints(strip_whitespace=True, max_length=200)] | None = None
    details: Annotated[str, StringConstraints(max_length=4000)] | None = None
    type_id: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{32}$")] | None = Field(
        default=None, description="a type of the tenant's vocabulary (GET /v1/treatment-types)")


class TreatmentOut(BaseModel):
    id: str
    patient_id: str
    name: str
    area: str | None
    details: str | None
    performed_on: date
    type_id: str | None = None

    @classmethod
    def of(cls, view: TreatmentView) -> TreatmentOut:
        return cls(id=view.id, patient_id=view.patient_id, name=view.name, area=view.area, details=view.details,
                   performed_on=view.performed_on, type_id=view.type_id)


class TreatmentList(BaseModel):
    items: list[TreatmentOut]
    next_cursor: str | None = Field(description="always null: a patient's treatments come in one page")


@routes.post("/v1/patients/{patient_id}/treatments", summary="Record a treatment", body=TreatmentCreate, status=201,
             response=TreatmentOut, errors=(404, 410, 422))
async def create_treatment(request: web.Request) -> web.Response:
    body = await read_json(request, TreatmentCreate, limit=request.app[SETTINGS].max_json_bytes)
    view = await request.app[TREATMENTS].create(actor_of(request), request.match_info["patient_id"], **body.model_dump())
    out = TreatmentOut.of(view)
    return json_response(out, status=201, headers={"Location": f"/v1/patients/{out.patient_id}/treatments"})


@routes.get("/v1/patients/{patient_id}/treatments", summary="List a patient's treatments", response=TreatmentList,
            errors=(404, 410))
async def list_treatments(request: web.Request) -> web.Response:
    items = await request.app[TREATMENTS].list(actor_of(request), request.match_info["patient_id"])
    return json_response(TreatmentList(items=[TreatmentOut.of(t) for t in items], next_cursor=None))


# not blank; a NUL is refused at the edge (vault.http.jsonio.refuse_nul), as the schema says
TypeName = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=80)]


class TreatmentTypeOut(BaseModel):
    id: str
    name: str


class TreatmentTypes(BaseModel):
    items: list[TreatmentTypeOut]


class TreatmentTypesIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    names: list[TypeName] = Field(max_length=200, description="the whole vocabulary: kept names keep their ids, "
                                  "dropped ones go (409 type_in_use while a treatment uses one)")


def _types(items: tuple[TypeView, ...]) -> TreatmentTypes:
    return TreatmentTypes(items=[TreatmentTypeOut(id=t.id, name=t.name) for t in items])


@routes.get("/v1/treatment-types", summary="The tenant's treatment-type vocabulary (shared by many patients)",
            response=TreatmentTypes)
async def list_treatment_types(request: web.Request) -> web.Response:
    return json_response(_types(await request.app[TREATMENTS].types(actor_of(request))))


@routes.put("/v1/treatment-types", summary="Replace the treatment-type vocabulary", body=TreatmentTypesIn,
            response=TreatmentTypes, errors=(409, 422))
async def set_treatment_types(request: web.Request) -> web.Response:
    body = await read_json(request, TreatmentTypesIn, limit=request.app[SETTINGS].max_json_bytes)
    return json_response(_types(await request.app[TREATMENTS].set_types(actor_of(request), list(body.names))))
