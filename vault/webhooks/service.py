"""Webhooks: tenant configuration, events enqueued in the caller's transaction, and the
delivery of one event to one endpoint (run by the ``webhooks.deliver`` job).

    async with db.transaction() as session:
        ...                                               # the change (a withdrawal)
        await webhooks.notify(session, tenant_id, "consent.withdrawn", {"consent_id": ..., ...})

Delivery is at least once: a receiver deduplicates on the body's ``id`` (the event)
or the ``X-Vault-Delivery`` header.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from keys import aead
from keys.store import KeyStore
from vault.actor import Actor
from vault.audit.service import AuditEvent, AuditLog
from vault.db import Database, new_id, utcnow
from vault.errors import ValidationFailed, VaultError
from vault.jobs import enqueue
from vault.webhooks import delivery
from vault.webhooks.responses import EndpointView, WebhookConfig
from vault.webhooks.models import (
    CANCELLED,
    DELIVERED,
    DELIVERY_STATES,
    FAILED,
    PENDING,
    WebhookDelivery,
    WebhookEndpoint,
    WebhookEvent,
    WebhookSecret,
)

JOB_KIND = "webhooks.deliver"
MAX_ENDPOINTS = 10
_SECRET_KEY_INDEX = "webhooks.secret-key"  # how the key was derived before purpose keys
SECRET_PURPOSE = "webhook-secret"
# (purpose key, legacy derivation): made from a tenant's legacy index key before it is retired.
LEGACY_KEY_DERIVATIONS = ((SECRET_PURPOSE, _SECRET_KEY_INDEX),)
_SECRET_LABEL = "vault.webhooks.v1.secret"


class DeliveryFailed(VaultError):
    """One delivery attempt failed; the job queue retries it. The message is a short code."""

    code, default_message = "webhook_delivery_failed", "webhook delivery failed"


class WebhookService:
    def __init__(self, db: Database, audit: AuditLog, keys: KeyStore, *, allow_http_loopback: bool,
                 allow: delivery.AllowList = delivery.NOTHING_ALLOWED, ca_file: str | None = None) -> None:
        self.db = db
        self.allow = allow
        self.tls = delivery.tls_context(ca_file)
        self.audit = audit
        self.keys = keys
        self.allow_http_loopback = allow_http_loopback

    # -- the secret ----------------------------------------------------------------------
    async def _secret_key(self, tenant_id: str) -> bytes:
        # The tenant's own long-lived key for this purpose (the key store's purpose keys);
        # for a tenant from before them, the value the old code derived from its index key.
        return await self.keys.purpose_key(tenant_id, SECRET_PURPOSE, legacy_derivation=_SECRET_KEY_INDEX)

    async def _seal_secret(self, tenant_id: str, secret: str) -> bytes:
        return aead.seal(await self._secret_key(tenant_id), secret.encode(), aead.aad(_SECRET_LABEL, tenant_id))

    async def _open_secret(self, tenant_id: str, sealed: bytes) -> str:
        return aead.open_sealed(await self._secret_key(tenant_id), sealed, aead.aad(_SECRET_LABEL, tenant_id)).decode()

    # -- configuration -------------------------------------------------------------------
    async def config(self, actor: Actor) -> WebhookConfig:
        async with self.db.session() as session:
            view = await self._view(session, actor.tenant_id)
        await self.audit.record(AuditEvent.of(actor, "webhooks.read"))
        return view

    async def _view(self, session: AsyncSession, tenant_id: str) -> WebhookConfig:
        endpoints = (
            await session.execute(
                select(WebhookEndpoint).where(WebhookEndpoint.tenant_id == tenant_id).order_by(WebhookEndpoint.created_at, WebhookEndpoint.id)
            )
        ).scalars().all()
        secret = await session.get(WebhookSecret, tenant_id)
        counts = dict.fromkeys(DELIVERY_STATES, 0)
        rows = await session.execute(
            select(WebhookDelivery.state, func.count()).where(WebhookDelivery.tenant_id == tenant_id).group_by(WebhookDelivery.state)
        )
        counts.update({state: n for state, n in rows})
        return WebhookConfig(
            endpoints=[EndpointView(id=e.id, url=e.url, created_at=e.created_at.isoformat()) for e in endpoints],
            secret_created_at=secret.created_at.isoformat() if secret else None,
            deliveries=counts,
        )

    async def configure(self, actor: Actor, urls: list[str], *, rotate_secret: bool) -> WebhookConfig:
        """Replace the endpoint list. The signing secret is made on first use (or when
        rotated) and returned only then."""
        if len(urls) > MAX_ENDPOINTS:
            raise ValidationFailed(details={"errors": [{"field": "urls", "problem": "too_many", "max": MAX_ENDPOINTS}]})
        if len(set(urls)) != len(urls):
            raise ValidationFailed(details={"errors": [{"field": "urls", "problem": "duplicate"}]})
        results = await asyncio.gather(*(self._check(u) for u in urls))
        problems = [{"field": f"urls.{i}", "problem": p} for i, p in enumerate(results) if p is not None]
        if problems:
            raise ValidationFailed("a webhook destination was refused", details={"errors": problems})
        fresh = None
        async with self.db.transaction() as session:
            existing = {
                e.url: e
                for e in (await session.execute(select(WebhookEndpoint).where(WebhookEndpoint.tenant_id == actor.tenant_id))).scalars()
            }
            gone = [e.id for url, e in existing.items() if url not in urls]
            if gone:
                await session.execute(delete(WebhookEndpoint).where(WebhookEndpoint.id.in_(gone)))
            for url in urls:
                if url not in existing:
                    session.add(WebhookEndpoint(id=new_id(), tenant_id=actor.tenant_id, url=url, created_by=actor.token_id))
            secret = await session.get(WebhookSecret, actor.tenant_id)
            if secret is None or rotate_secret:
                fresh = "whsec_" + secrets.token_urlsafe(32)
                sealed = await self._seal_secret(actor.tenant_id, fresh)
                if secret is None:
                    session.add(WebhookSecret(tenant_id=actor.tenant_id, sealed=sealed, created_by=actor.token_id))
                else:
                    secret.sealed, secret.created_by, secret.created_at = sealed, actor.token_id, utcnow()
            await session.flush()
            await self.audit.append(
                session,
                AuditEvent.of(actor, "webhooks.configure", count=str(len(urls)), secret="rotated" if fresh else "kept"),
            )
            view = await self._view(session, actor.tenant_id)
        if fresh is not None:
            view = view.model_copy(update={"secret": fresh})
        return view

    async def _check(self, url: str) -> str | None:
        try:
            await delivery.resolve(url, allow_http_loopback=self.allow_http_loopback, allow=self.allow)
        except delivery.Refused as refused:
            return refused.problem
        return None

    # -- events --------------------------------------------------------------------------
    async def notify(self, session: AsyncSession, tenant_id: str, kind: str, ids: dict[str, Any]) -> str | None:
        """Record an event and enqueue one delivery per configured endpoint, in the
        caller's transaction. ``ids`` hold ids (and lists of ids) only. Returns the
        event id, or None when the tenant has no endpoint."""
        (event_id,) = await self.notify_all(session, tenant_id, [(kind, ids)])
        return event_id

    async def notify_all(
        self, session: AsyncSession, tenant_id: str, events: list[tuple[str, dict[str, Any]]]
    ) -> list[str | None]:
        """:meth:`notify` for several events of one transaction, in order (a photo's
        ``media.created`` and ``media.ready``): the tenant's endpoints are read once."""
        endpoint_ids = (
            await session.execute(select(WebhookEndpoint.id).where(WebhookEndpoint.tenant_id == tenant_id))
        ).scalars().all()
        if not endpoint_ids:
            return [None] * len(events)
        recorded: list[str | None] = []
        for kind, ids in events:
            event_id = new_id()
            body = {"id": event_id, "type": kind, "tenant_id": tenant_id, "created_at": utcnow().isoformat(), **ids}
            session.add(WebhookEvent(id=event_id, tenant_id=tenant_id, kind=kind,
                                     body=json.dumps(body, sort_keys=True, separators=(",", ":"))))
            await session.flush()
            for endpoint_id in endpoint_ids:
                row = WebhookDelivery(id=new_id(), tenant_id=tenant_id, event_id=event_id, endpoint_id=endpoint_id,
                                      state=PENDING)
                session.add(row)
                await session.flush()
                await enqueue(session, JOB_KIND, {"delivery_id": row.id})
            recorded.append(event_id)
        return recorded

    # -- delivery (the job) --------------------------------------------------------------
    async def deliver(
        self, delivery_id: str, *, last_attempt: bool, finish: Callable[[AsyncSession], Awaitable[None]]
    ) -> None:
        """One attempt. Success and cancellation commit with ``finish`` (the job's fenced
        completion); a failure is recorded, then raised for the queue to retry."""
        async with self.db.session() as session:
            row = await session.get(WebhookDelivery, delivery_id)
            if row is None or row.state != PENDING:
                return  # delivered, cancelled or given up by an earlier run
            event = await session.get_one(WebhookEvent, row.event_id)  # foreign key: it exists
            endpoint = await session.get(WebhookEndpoint, row.endpoint_id)
            secret = await session.get(WebhookSecret, row.tenant_id)
        if endpoint is None or secret is None:
            await self._settle(delivery_id, state=CANCELLED, status=None, error="endpoint_removed", finish=finish)
            return
        body = event.body.encode()
        timestamp = int(time.time())
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "clinical-photo-vault-webhooks/1",
            "X-Vault-Event": event.kind,
            "X-Vault-Delivery": row.id,
            delivery.SIGNATURE_HEADER: delivery.signature(await self._open_secret(row.tenant_id, secret.sealed), timestamp, body),
        }
        status, problem = None, None
        try:
            destination = await delivery.resolve(endpoint.url, allow_http_loopback=self.allow_http_loopback, allow=self.allow)
            status = await delivery.post(destination, body, headers, tls=self.tls)
        except delivery.Refused as refused:
            problem = refused.problem
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            problem = type(exc).__name__
        if status is not None and 200 <= status < 300:
            await self._settle(delivery_id, state=DELIVERED, status=status, error=None, finish=finish)
            return
        problem = problem or f"http_{status}"
        await self._settle(delivery_id, state=FAILED if last_attempt else PENDING, status=status, error=problem, finish=None)
        raise DeliveryFailed(problem)

    async def give_up(self, delivery_id: str, *, error: str) -> None:
        """The delivery job went dead (its worker lost on the last attempt, say): a
        delivery still ``pending`` is marked ``failed`` so the recall list says so."""
        async with self.db.transaction() as session:
            row = await session.get(WebhookDelivery, delivery_id, with_for_update=True)
            if row is not None and row.state == PENDING:
                row.state, row.last_error, row.finished_at = FAILED, error.split(":", 1)[0][:100], utcnow()

    async def _settle(self, delivery_id: str, *, state: str, status: int | None, error: str | None,
                      finish: Callable[[AsyncSession], Awaitable[None]] | None) -> None:
        async with self.db.transaction() as session:
            # Loaded by ``deliver`` just before; deliveries are never deleted.
            row = await session.get_one(WebhookDelivery, delivery_id, with_for_update=True)
            row.attempts += 1
            row.state, row.last_status, row.last_error = state, status, error
            if state != PENDING:
                row.finished_at = utcnow()
            if finish is not None:
                await finish(session)
