"""Declarative endpoints: each domain's views list theirs; the app registers them
and the OpenAPI document is generated from the same list."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
H = TypeVar("H", bound=Handler)  # the decorators hand back the handler as it was typed


@dataclass(frozen=True, kw_only=True)
class Endpoint:
    """One route as the OpenAPI document describes it (vault/http/openapi.py).
    tests/http/test_openapi.py fails for an endpoint whose JSON answer has no
    ``response`` model, or that reads a query, body or header it does not declare."""

    method: str
    path: str
    handler: Handler
    summary: str
    tag: str
    body: type[BaseModel] | None = None
    body_required: bool = True  # False: the handler reads a body only when one is sent
    query: type[BaseModel] | None = None
    status: int = 200
    response: type[BaseModel] | None = None
    request_media: tuple[str, ...] = ()  # raw (non-JSON) request bodies
    #: a non-JSON answer's media type(s): a binary body (a ``+json`` one is described as such)
    response_media: str | tuple[str, ...] = "application/json"
    errors: tuple[int, ...] = ()
    #: request headers read, by name (vault/http/openapi.py HEADERS: Idempotency-Key, Range, If-None-Match)
    headers: tuple[str, ...] = ()
    #: other answers with a body of their own, e.g. {200: MediaView} for a replayed upload
    also: dict[int, type[BaseModel]] = field(default_factory=dict, hash=False)


@dataclass
class Endpoints:
    """The endpoints of one domain, collected by decorators."""

    tag: str
    items: list[Endpoint] = field(default_factory=list)

    def route(self, method: str, path: str, *, summary: str, **options: Any) -> Callable[[H], H]:
        def register(handler: H) -> H:
            self.items.append(
                Endpoint(method=method, path=path, handler=handler, summary=summary, tag=self.tag, **options)
            )
            return handler

        return register

    def get(self, path: str, **options: Any) -> Callable[[H], H]:
        return self.route("GET", path, **options)

    def post(self, path: str, **options: Any) -> Callable[[H], H]:
        return self.route("POST", path, **options)

    def put(self, path: str, **options: Any) -> Callable[[H], H]:
        return self.route("PUT", path, **options)

    def patch(self, path: str, **options: Any) -> Callable[[H], H]:
        return self.route("PATCH", path, **options)

    def delete(self, path: str, **options: Any) -> Callable[[H], H]:
        return self.route("DELETE", path, **options)


ENDPOINTS = web.AppKey("endpoints", list[Endpoint])


def add_endpoints(app: web.Application, endpoints: Endpoints) -> None:
    registered = app.setdefault(ENDPOINTS, [])
    for endpoint in endpoints.items:
        if endpoint.method == "GET":  # GET routes answer HEAD too, which the content routes need
            app.router.add_get(endpoint.path, endpoint.handler, allow_head=True)
        else:
            app.router.add_route(endpoint.method, endpoint.path, endpoint.handler)
        registered.append(endpoint)
