"""The composition root's typed application keys: what ``create_app`` opens for itself.

Each domain's own service key lives in its HTTP module (``PATIENTS`` in
``vault/patients/views.py`` and so on) and is filled by that domain's ``setup(app)``;
handlers read only their domain's key, never :data:`RUNTIME`.
"""

from __future__ import annotations

from aiohttp import web

from vault.config import Settings
from vault.http.limits import UploadLimits
from vault.metrics import METRICS  # noqa: F401 - defined beside Metrics, which imports no key of ours
from vault.readiness import Readiness
from vault.runtime import Runtime

SETTINGS = web.AppKey("settings", Settings)
# Read by the composition root only: app.py, the domains' setup hooks and the in-process worker.
RUNTIME = web.AppKey("runtime", Runtime)
UPLOAD_LIMITS = web.AppKey("upload_limits", UploadLimits)
READINESS = web.AppKey("readiness", Readiness)
