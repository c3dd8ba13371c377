from __future__ import annotations

from datetime import date
from typing import Annotated

from aiohttp import web
from pydantic import BaseModel, ConfigDict, StringConstraints

from vault.appkeys import SETTINGS, TREATMENTS
from vault.http.context import actor_of
from vault.http.jsonio import json_response, read_json
from vault.http.routing import Endpoints

routes = Endpoints("treatments")


class TreatmentCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
    performed_on: date
    area: Annotated[str, StringConstraints(strip_whitespace=True, max_length=200)] | None = None
    details: Annotated[str, StringConstraints(max_length=4000)] | None = None


@routes.post("/v1/patients/{patient_id}/treatments", summary="Record a treatment", body=TreatmentCreate, status=201, errors=(404, 410, 422))
async def create_treatment(request: web.Request) -> web.Response:
    body = await read_json(request, TreatmentCreate, limit=request.app[SETTINGS].max_json_bytes)
    view = await request.app[TREATMENTS].create(actor_of(request), request.match_info["patient_id"], **body.model_dump())
    return json_response(view.as_dict(), status=201)


@routes.get("/v1/patients/{patient_id}/treatments", summary="List a patient's treatments", errors=(404, 410))
async def list_treatments(request: web.Request) -> web.Response:
    items = await request.app[TREATMENTS].list(actor_of(request), request.match_info["patient_id"])
    return json_response({"items": [t.as_dict() for t in items], "next_cursor": None})
