"""The job modules a worker loads: the explicit list of every job kind's home.

A new job module is added here; ``VAULT_WORKER_IMPORTS`` adds more (tests, extensions).
:func:`load` lives here rather than in ``workers.registry``, so the registry never
imports back the modules that register into it.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable

from workers.registry import Registry, registry

MODULES: tuple[str, ...] = ("workers.jobs.maintenance", "workers.jobs.media", "workers.jobs.keys", "workers.jobs.webhooks", "workers.jobs.releases",
                           "workers.jobs.lifecycle", "workers.jobs.storage", "workers.jobs.faces",
                           "workers.jobs.dicom")


def load(extra: Iterable[str] = ()) -> Registry:
    """Import every job module (the explicit list, then ``extra``) and return the
    registry they declared their jobs in."""
    for module in (*MODULES, *extra):
        importlib.import_module(module)
    return registry
