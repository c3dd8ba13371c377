"""Outside tools the deploy tests drive (systemd-analyze, nginx, inotifywait, promtool).

Where one is missing the test skips on a developer machine but fails in CI (``CI=true``),
where .ci/run installs them: a deploy check that silently skipped would prove nothing."""

from __future__ import annotations

import os
import shutil

import pytest


# Debian package that provides each tool (keep in step with .ci/run's need list).
PACKAGES = {"systemd-analyze": "systemd", "nginx": "nginx-light", "inotifywait": "inotify-tools",
            "promtool": "prometheus"}


def need(tool: str) -> str:
    path = shutil.which(tool) or next(
        (p for p in (f"/usr/sbin/{tool}", f"/sbin/{tool}") if os.access(p, os.X_OK)), None
    )
    if path:
        return path
    message = f"{tool} is not installed (Debian package {PACKAGES.get(tool, tool)})"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(message + ": CI must install it (.ci/run)")
    pytest.skip(message)
