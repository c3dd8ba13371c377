"""At ``VAULT_LOG_LEVEL=DEBUG`` no SQL parameter reaches the logs: not the blind index of
an MRN, not a bearer token or its digest, not a name. aiosqlite logs every call with its
arguments at DEBUG, and SQLAlchemy's engine logs parameters when its logger is at INFO:
the first is silenced by ``vault.logs.configure``, the second by ``hide_parameters`` on
every engine (metadata and key store), which also keeps values out of exception text.
"""

from __future__ import annotations

import logging
import secrets

import pytest

from keys import db as keys_db
from tests.lifecycle.support import Api, drain
from vault.lifecycle.erasure import PURGE_PATIENT
from vault.logs import JsonFormatter, configure
from vault.patients.service import REF_INDEX, normalise_ref

_TOUCHED = ("", "botocore", "boto3", "urllib3", "s3transfer", "alembic", "sqlalchemy", "sqlalchemy.engine",
            "aiosqlite", "asyncpg", "aiohttp.access")


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.lines: list[str] = []
        self.setFormatter(JsonFormatter())

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@pytest.fixture
def debug_logs():
    saved = {name: (logging.getLogger(name).level, logging.getLogger(name).disabled) for name in _TOUCHED}
    handlers = logging.getLogger().handlers[:]
    configure("DEBUG")
    lines = _Lines()
    logging.getLogger().addHandler(lines)
    try:
        yield lines
    finally:
        logging.getLogger().handlers[:] = handlers
        for name, (level, disabled) in saved.items():
            logging.getLogger(name).setLevel(level)
            logging.getLogger(name).disabled = disabled


async def test_no_sql_parameter_is_logged_at_debug(api: Api, debug_logs: _Lines):
    mrn, name = "MRN-" + secrets.token_hex(8), "Zebediah " + secrets.token_hex(4)
    pid = await api.patient(external_ref=mrn, display_name=name)
    found = await api.json("GET", "/v1/patients", role="practitioner", params={"external_ref": mrn})
    assert [p["id"] for p in found["items"]] == [pid]
    # Someone debugging turns SQLAlchemy's statement log on: values stay hidden.
    logging.getLogger("sqlalchemy.engine").setLevel(logging.INFO)
    await api.json("GET", "/v1/patients", role="practitioner", params={"external_ref": mrn})
    ref_index = await api.rt.keys.blind_index(api.clinic.id, REF_INDEX, normalise_ref(mrn))
    await api.json("POST", f"/v1/patients/{pid}/erasure", role="erasure", json={"reason": "Art. 17 request"})
    await drain(api.rt, PURGE_PATIENT)

    text = "\n".join(debug_logs.lines)
    assert any('"logger": "sqlalchemy.engine' in line for line in debug_logs.lines)  # the log was on
    assert "SQL parameters hidden" in text
    tokens = list(api.clinic.tokens.values())
    for secret in (mrn, ref_index, name, pid, *tokens):
        assert secret not in text
    assert not any('"logger": "aiosqlite' in line for line in debug_logs.lines)


def test_every_engine_hides_parameters(tmp_path):
    from vault.db.engine import Database

    database = Database(f"sqlite+aiosqlite:///{tmp_path / 'm.sqlite3'}")
    keystore = keys_db.create_engine(f"sqlite+aiosqlite:///{tmp_path / 'k.sqlite3'}")
    try:
        for engine in (database.read_engine, database.write_engine, keystore):
            assert engine.sync_engine.hide_parameters is True
    finally:
        database.read_engine.sync_engine.dispose()
        database.write_engine.sync_engine.dispose()
        keystore.sync_engine.dispose()
