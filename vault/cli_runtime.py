"""What every CLI command shares: a request id for its audit entries, and the runtime."""

from __future__ import annotations

import asyncio
import secrets

from vault.config import Settings


def request_id() -> str:
    return "cli-" + secrets.token_hex(8)


def run_with_runtime(settings: Settings, action) -> int:
    """Open the runtime (no group-commit writer: one command, few entries), run
    ``action(rt)`` and return its exit code (None means 0)."""
    from vault.runtime import runtime

    async def main() -> int:
        async with runtime(settings, group_commit=False) as rt:
            return await action(rt) or 0

    return asyncio.run(main())
