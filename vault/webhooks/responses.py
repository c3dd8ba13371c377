"""What the webhook configuration endpoints answer."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, SerializerFunctionWrapHandler, model_serializer


class EndpointView(BaseModel):
    id: str
    url: str
    created_at: str


class WebhookConfig(BaseModel):
    endpoints: list[EndpointView]
    secret_created_at: str | None
    deliveries: dict[str, int]
    secret: str | None = None  # the signing secret, only in the answer that made it

    @model_serializer(mode="wrap")
    def _secret_only_when_made(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # The key is absent (not null) otherwise: clients test for its presence.
        data: dict[str, Any] = handler(self)
        if self.secret is None:
            data.pop("secret", None)
        return data
