"""The public half of erasure receipts: the key anyone can verify them with."""

from __future__ import annotations

from aiohttp import web

from vault.appkeys import KEYS, RUNTIME
from vault.http.context import actor_of
from vault.http.jsonio import json_response
from vault.http.routing import Endpoints
from vault.receipts import public_key_document

routes = Endpoints("erasure-receipts")


@routes.get(
    "/v1/erasure-receipts/public-key",
    summary="The Ed25519 public key that signs erasure receipts and audit checkpoints",
)
async def receipt_public_key(request: web.Request) -> web.Response:
    response = json_response(await public_key_document(request.app[KEYS]))
    # Public and stable: clients may cache it (json_response defaults to no-store).
    response.headers["Cache-Control"] = "public, max-age=3600"
    return response


@routes.get(
    "/v1/erasure-receipts/{receipt_id}/finality",
    summary="Signed attestation of whether an erasure receipt's root-key epochs are destroyed (final everywhere)",
    errors=(404,),
)
async def receipt_finality(request: web.Request) -> web.Response:
    lifecycle = request.app[RUNTIME].lifecycle
    return json_response(await lifecycle.erasure.finality(actor_of(request), request.match_info["receipt_id"]))
