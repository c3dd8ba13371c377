"""The lifecycle services, wired once by :func:`vault.runtime.runtime`."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING

from vault.lifecycle.erasure import ErasureService
from vault.lifecycle.exports import ExportService
from vault.lifecycle.holds import HoldService
from vault.lifecycle.purge import Purger
from vault.lifecycle.retention import RetentionService

if TYPE_CHECKING:
    from vault.config import Settings


@dataclass(frozen=True)
class Lifecycle:
    erasure: ErasureService
    holds: HoldService
    retention: RetentionService
    exports: ExportService
    purger: Purger

    @classmethod
    def build(cls, settings: Settings, *, db, audit, keys, ledger, sealed, store, patients, treatments, media, consents,
              webhooks) -> Lifecycle:
        erasure = ErasureService(db=db, audit=audit, keys=keys, ledger=ledger, patients=patients, webhooks=webhooks,
                                 backup_window_days=settings.backup_window_days)
        return cls(
            erasure=erasure,
            holds=HoldService(db=db, audit=audit, keys=keys, patients=patients),
            retention=RetentionService(db=db, audit=audit, erasure=erasure, max_erasures=settings.retention_max_erasures),
            exports=ExportService(db=db, audit=audit, keys=keys, sealed=sealed, patients=patients, treatments=treatments,
                                  media=media, consents=consents, ttl=timedelta(hours=settings.export_ttl_hours)),
            purger=Purger(db=db, store=store, keys=keys, webhooks=webhooks),
        )
