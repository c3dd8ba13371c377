"""What every CLI command shares: a request id for its audit entries, and the runtime."""

from __future__ import annotations

import asyncio
import secrets

from pathlib import Path

from sqlalchemy.engine import make_url

from vault.config import Settings
from vault.errors import ConfigError


def request_id() -> str:
    return "cli-" + secrets.token_hex(8)


def require_data(settings: Settings) -> None:
    """Commands other than ``serve`` and ``migrate`` work on an existing vault: run from
    the wrong folder they must say so, not create an empty vault with a new root key."""
    if not settings.is_sqlite:
        return
    database = make_url(settings.database_url).database or ""
    if not Path(database).is_file():
        raise ConfigError(
            "VAULT_DATA_DIR",
            f"no vault data in {settings.data_dir}; set VAULT_DATA_DIR to the vault's data folder "
            "(`vault serve` or `vault migrate` creates a new one)",
        )


def run_with_runtime(settings: Settings, action) -> int:
    """Open the runtime of an existing vault (no group-commit writer: one command, few
    entries; never a new root key), run ``action(rt)`` and return its exit code (None means 0)."""
    from vault.runtime import runtime

    require_data(settings)

    async def main() -> int:
        async with runtime(settings, group_commit=False, create_root_key=False) as rt:
            return await action(rt) or 0

    return asyncio.run(main())
