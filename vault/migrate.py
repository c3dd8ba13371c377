"""Run the metadata database's Alembic migrations from code (the CLI and tests).

Alembic's async env calls ``asyncio.run``; call these from synchronous code or
through ``asyncio.to_thread``.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

# Shipped inside the package (wheel included), so an installed vault migrates without
# the source tree; the repository's alembic.ini points here too, for the alembic CLI.
MIGRATIONS = Path(__file__).with_name("migrations")


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["url"] = url
    return cfg


def upgrade(url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(url), revision)


def schema_status(connection) -> str:
    """How the metadata database compares with this code (see :func:`keys.migrate.schema_status`)."""
    from keys.migrate import schema_status as status

    return status(connection, MIGRATIONS)


def check(url: str) -> None:
    """Raise when the models and the migrations disagree (``alembic check``)."""
    command.check(alembic_config(url))
