"""HTTP layer of the DICOM export (docs/integration.md): its routes, typed key and ``setup``.
Roles are decided by the middleware (vault/permissions.py); tenant and ownership by the
service."""

from __future__ import annotations

from aiohttp import web

from vault.appkeys import RUNTIME
from vault.dicom.responses import DicomExportOut
from vault.dicom.service import DicomExports
from vault.http.context import actor_of
from vault.http.jsonio import json_response
from vault.http.routing import Endpoints, add_endpoints

routes = Endpoints("dicom")
DICOM = web.AppKey("dicom", DicomExports)


def setup(app: web.Application) -> None:
    add_endpoints(app, routes)

    async def wire(app: web.Application) -> None:
        app[DICOM] = app[RUNTIME].dicom

    app.on_startup.append(wire)


@routes.post("/v1/media/{media_id}/dicom-exports",
             summary="Send a photo to the PACS as a DICOM VL Photographic Image (DICOMweb STOW-RS, by a job)",
             status=202, response=DicomExportOut, errors=(404, 409, 410))
async def request_dicom_export(request: web.Request) -> web.Response:
    export = await request.app[DICOM].request(actor_of(request), request.match_info["media_id"])
    return json_response(export, status=202, headers={"Location": f"/v1/dicom-exports/{export.id}"})


@routes.get("/v1/dicom-exports/{dicom_export_id}", summary="A DICOM export's status: pending, sending, sent or failed",
            response=DicomExportOut, errors=(404, 410))
async def dicom_export_status(request: web.Request) -> web.Response:
    return json_response(await request.app[DICOM].status(actor_of(request), request.match_info["dicom_export_id"]))
