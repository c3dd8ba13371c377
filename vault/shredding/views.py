"""HTTP layer of erasure receipts: the key anyone can verify them with, and finality."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from pydantic import BaseModel, Field

from vault.appkeys import RUNTIME
from vault.http.context import actor_of
from vault.http.jsonio import json_response
from vault.http.routing import Endpoints, add_endpoints
from vault.shredding.receipts import ReceiptService

routes = Endpoints("erasure-receipts")
RECEIPTS = web.AppKey("erasure_receipts", ReceiptService)


def setup(app: web.Application) -> None:
    add_endpoints(app, routes)
    app.on_startup.append(_bind)


async def _bind(app: web.Application) -> None:
    app[RECEIPTS] = app[RUNTIME].receipts


class ReceiptPublicKey(BaseModel):
    algorithm: str
    public_key_pem: str
    fingerprint: str


class ReceiptFinality(BaseModel):
    finality: dict[str, Any] = Field(description="the signed document, exactly as signed")
    signature: str


@routes.get(
    "/v1/erasure-receipts/public-key",
    summary="The Ed25519 public key that signs erasure receipts and audit checkpoints",
    response=ReceiptPublicKey,
)
async def receipt_public_key(request: web.Request) -> web.Response:
    key = await request.app[RECEIPTS].public_key()
    response = json_response(ReceiptPublicKey(algorithm=key.algorithm, public_key_pem=key.public_key_pem,
                                          fingerprint=key.fingerprint))
    # Public and stable: clients may cache it (json_response defaults to no-store).
    response.headers["Cache-Control"] = "public, max-age=3600"
    return response


@routes.get(
    "/v1/erasure-receipts/{receipt_id}/finality",
    summary="Signed attestation of whether an erasure receipt's root-key epochs are destroyed (final everywhere)",
    response=ReceiptFinality,
    errors=(404,),
)
async def receipt_finality(request: web.Request) -> web.Response:
    signed = await request.app[RECEIPTS].finality(actor_of(request), request.match_info["receipt_id"])
    return json_response(ReceiptFinality(finality=signed.finality, signature=signed.signature))
