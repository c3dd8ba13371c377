"""Structured JSON log lines (stdlib logging).

Log ids, route templates, status codes and timings — never patient data, keys,
tokens or raw URLs (a query string can hold an ``external_ref``). The request id
travels in a context variable so every line of a request carries it.
"""

from __future__ import annotations

import json
import logging
import sys
from contextvars import ContextVar
from datetime import UTC, datetime
from types import TracebackType
from typing import Any

request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        request_id = request_id_var.get()
        if request_id:
            line["request_id"] = request_id
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                line[key] = value
        if record.exc_info and record.exc_info[0] is not None:
            # The exception type and where it was raised; its message may quote data.
            line["exc_type"] = record.exc_info[0].__name__
            line["traceback"] = _frames(record.exc_info[2])
        return json.dumps(line, default=str)


def _frames(tb: TracebackType | None) -> list[str]:
    import traceback

    return [f"{f.filename}:{f.lineno} in {f.name}" for f in traceback.extract_tb(tb)]


def configure(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # aiohttp's access log writes raw URLs; we log route templates ourselves.
    logging.getLogger("aiohttp.access").disabled = True
    # aiosqlite logs every call at DEBUG with its SQL and parameter values (blind
    # indexes, token digests); SQLAlchemy's engines also hide parameters themselves.
    for noisy in ("botocore", "boto3", "urllib3", "s3transfer", "alembic", "sqlalchemy", "aiosqlite", "asyncpg"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
