"""The metadata database: engines, sessions and the declarative base."""

from vault.db.base import Base, UTCDateTime, new_id, utcnow
from vault.db.engine import Database, rowcount

__all__ = ["Base", "Database", "UTCDateTime", "new_id", "rowcount", "utcnow"]
