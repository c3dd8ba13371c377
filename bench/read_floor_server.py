"""The floor of an audited read: the cheapest aiohttp server that keeps the vault's read invariants.

    python bench/read_floor_server.py CONFIG.json     (started by bench/bench_read_floor.py)

One route, ``GET /v1/media/{media_id}/thumbnail?size=256``, and on every request exactly
what the vault's invariants ask of a read, nothing else:

1. bearer token: SHA-256 of the presented token looked up in an in-memory dict (401);
   its role must be one that may read media (403);
2. tenant check: the rendition's cached metadata (tenant, patient, blob id, ETag) in an
   in-memory dict, its tenant compared with the token's (404);
3. the key row, read on every request (an erased or deleted object answers 410 at once):
   the object key row joined with its patient's DEK row, as ``keys/store.py`` reads it —
   SQLite: a plain ``sqlite3`` connection in WAL mode, queried synchronously on the loop;
   PostgreSQL: the key rows asked for in one turn of the loop read by one
   ``object_id = ANY($2)`` statement on an idle asyncpg connection (as ``keys/db.py``
   ``PointBatches``);
4. unwrap: the object key is unwrapped (KEK -> DEK -> object key, AES-256-GCM with the ids
   as AAD) on the first read of a key id, then kept in memory with its cipher;
5. a durable, hash-chained audit entry before the answer, group-committed: the entries
   waiting when the writer is free go in one commit. Each entry carries the columns of
   the vault's ``audit_entries`` and ``hash = sha256(prev_hash || "\\n" || canonical
   JSON)``. SQLite: one dedicated thread, ``BEGIN IMMEDIATE``, one multi-row INSERT,
   ``COMMIT``, under the vault's own pragmas (WAL, ``synchronous=FULL``). PostgreSQL: a
   dedicated asyncpg connection, either ``executemany`` in one transaction (``BEGIN``,
   INSERTs, ``COMMIT``) or one ``INSERT ... SELECT FROM unnest(...)`` in autocommit.
   One process writes the chain, so its head lives in memory (no head row to lock);
6. the ciphertext read from disk and AES-GCM-decrypted (as the peer does), answered with
   ``ETag`` and ``Cache-Control: private, no-cache``.

Plain ``web.Application``, no middleware, default asyncio loop, access log off.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import secrets
import sqlite3
import sys
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from json.encoder import encode_basestring_ascii as _string  # type: ignore[attr-defined]
from pathlib import Path
from typing import Any

from aiohttp import web
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

READ_ROLES = frozenset({"dpo", "practitioner", "records"})
ENTRY_COLUMNS = ("tenant_id", "seq", "at", "actor", "role", "action", "targets", "outcome", "request_id",
                 "prev_hash", "hash")
KEY_TABLES = (
    ("CREATE TABLE IF NOT EXISTS {s}patient_deks (tenant_id varchar(128), patient_id varchar(128), dek_id varchar(36) UNIQUE,"
     " kek_version integer NOT NULL, wrapped {blob} NOT NULL, PRIMARY KEY (tenant_id, patient_id))"),
    ("CREATE TABLE IF NOT EXISTS {s}object_keys (key_id varchar(36) PRIMARY KEY, tenant_id varchar(128) NOT NULL,"
     " patient_id varchar(128) NOT NULL, object_id varchar(128) NOT NULL, dek_id varchar(36) NOT NULL,"
     " wrapped {blob} NOT NULL, UNIQUE (tenant_id, object_id))"),
)
AUDIT_TABLE = ("CREATE TABLE IF NOT EXISTS {s}audit_entries (id {serial} PRIMARY KEY, tenant_id varchar(64) NOT NULL,"
               " seq bigint NOT NULL, at {at} NOT NULL, actor varchar(64) NOT NULL, role varchar(16) NOT NULL,"
               " action varchar(64) NOT NULL, targets text NOT NULL, outcome varchar(32) NOT NULL,"
               " request_id varchar(64) NOT NULL, prev_hash varchar(64) NOT NULL, hash varchar(64) NOT NULL,"
               " UNIQUE (tenant_id, seq))")
KEY_ROW = ("SELECT o.key_id, o.wrapped, d.dek_id, d.kek_version, d.wrapped FROM {s}object_keys o JOIN {s}patient_deks d"
           " ON d.tenant_id = o.tenant_id AND d.patient_id = o.patient_id AND d.dek_id = o.dek_id"
           " WHERE o.tenant_id = {t} AND o.patient_id = {p} AND o.object_id = {o}")
KEY_ROWS = ("SELECT o.object_id, o.patient_id, o.key_id, o.wrapped, d.dek_id, d.kek_version, d.wrapped"
            " FROM {s}object_keys o JOIN {s}patient_deks d"
            " ON d.tenant_id = o.tenant_id AND d.patient_id = o.patient_id AND d.dek_id = o.dek_id"
            " WHERE o.tenant_id = $1 AND o.object_id = ANY($2::text[])")
_ENTRY = ('{"action":%s,"actor":%s,"at":%s,"outcome":%s,"request_id":%s,"role":%s,"seq":%d,"targets":%s,'
          '"tenant_id":%s}')


def aad(label: str, *ids: str | int) -> bytes:
    return "\x1f".join((label, *map(str, ids))).encode()


class Chain:
    """The one writer's head of each tenant's chain; builds a batch's rows."""

    def __init__(self, *, text_at: bool) -> None:
        self.heads: dict[str, tuple[int, str]] = {}
        self._text_at = text_at  # SQLite: `at` stored as the vault stores it, naive UTC text

    def rows(self, events: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
        """Rows in ENTRY_COLUMNS order; each entry's hash over its canonical JSON, which is
        ``json.dumps(entry, sort_keys=True, separators=(",", ":"))`` written key by key
        (the batch's one timestamp formatted once), as the vault's ``canonical`` does."""
        now = datetime.now(UTC).replace(tzinfo=None)
        iso, at = _string(now.isoformat()), str(now) if self._text_at else now
        rows = []
        for e in events:
            tenant = e["tenant_id"]
            seq, prev = self.heads.get(tenant) or (0, hashlib.sha256(f"genesis:{tenant}".encode()).hexdigest())
            seq += 1
            body = _ENTRY % (_string(e["action"]), _string(e["actor"]), iso, _string(e["outcome"]), _string(e["request_id"]),
                             _string(e["role"]), seq, _string(e["targets"]), _string(tenant))
            digest = hashlib.sha256((prev + "\n" + body).encode()).hexdigest()
            rows.append((tenant, seq, at, e["actor"], e["role"], e["action"], e["targets"], e["outcome"], e["request_id"],
                         prev, digest))
            self.heads[tenant] = (seq, digest)
        return rows


class GroupCommit:
    """Entries waiting while a commit is in flight go together in the next one.

    The next commit is held (at most half a commit's time, 2 ms at most) until as many
    entries wait as were written or waiting at the last commit's end, as the vault's
    ``AuditLog._gather`` does: without it the readers a commit releases arrive just after
    the next batch left, and the clients split into two halves that alternate."""

    HOLD_MAX = 0.002

    def __init__(self, write: Any, *, hold: bool = True) -> None:
        self._write, self._hold = write, hold
        self._waiting: list[tuple[dict[str, Any], asyncio.Future[None]]] = []
        self._wake = asyncio.Event()
        self._gathered: asyncio.Event | None = None
        self._expected, self._commit_seconds = 0, 0.0
        self.commits, self.entries, self.writing = 0, 0, 0.0  # written by the bench into stats.json at exit
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def record(self, event: dict[str, Any]) -> None:
        done = asyncio.get_running_loop().create_future()
        self._waiting.append((event, done))
        self._wake.set()
        if self._gathered is not None and len(self._waiting) >= self._expected:
            self._gathered.set()
        await done

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self._hold and self._expected > len(self._waiting) and self._commit_seconds:
                gathered = self._gathered = asyncio.Event()
                try:
                    await asyncio.wait_for(gathered.wait(), min(self._commit_seconds / 2, self.HOLD_MAX))
                except TimeoutError:
                    pass
                self._gathered = None
            batch, self._waiting = self._waiting, []
            if not batch:
                continue
            started = loop.time()
            try:
                await self._write([event for event, _ in batch])
            except Exception as exc:  # noqa: BLE001 — every waiting read fails with it (500), none answers unaudited
                for _, done in batch:
                    done.set_exception(exc)
            else:
                for _, done in batch:
                    done.set_result(None)
            spent = loop.time() - started
            self.commits, self.entries, self.writing = self.commits + 1, self.entries + len(batch), self.writing + spent
            self._commit_seconds = 0.8 * self._commit_seconds + 0.2 * spent if self._commit_seconds else spent
            self._expected = len(self._waiting) + len(batch)


class SqliteStores:
    def __init__(self, cfg: dict[str, Any]) -> None:
        self.pragmas, folder = cfg["sqlite_pragmas"], Path(cfg["sqlite_dir"])
        if not cfg.get("durable", True):  # the bench's reference only: commits that do not wait for the disk
            self.pragmas = [p.replace("synchronous=FULL", "synchronous=OFF") for p in self.pragmas]
        self.keys_path, self.audit_path = str(folder / "floor-keys.db"), str(folder / "floor-audit.db")
        self.keys = self._connect(self.keys_path)
        self._key_row = KEY_ROW.format(s="", t="?", p="?", o="?")
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="floor-audit")
        self._audit: sqlite3.Connection | None = None
        self._chain = Chain(text_at=True)

    def _connect(self, path: str) -> sqlite3.Connection:
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        for pragma in self.pragmas:
            conn.execute(pragma)
        return conn

    async def setup(self, dek_row: tuple[Any, ...], key_row: tuple[Any, ...]) -> None:
        for ddl in KEY_TABLES:
            self.keys.execute(ddl.format(s="", blob="blob"))
        self.keys.execute("INSERT INTO patient_deks VALUES (?, ?, ?, ?, ?)", dek_row)
        self.keys.execute("INSERT INTO object_keys VALUES (?, ?, ?, ?, ?, ?)", key_row)
        audit = self._connect(self.audit_path)
        audit.execute(AUDIT_TABLE.format(s="", serial="integer", at="datetime"))
        audit.close()

    async def key_row(self, tenant_id: str, patient_id: str, object_id: str) -> tuple[Any, ...] | None:
        return self.keys.execute(self._key_row, (tenant_id, patient_id, object_id)).fetchone()  # type: ignore[no-any-return]

    def _write(self, events: list[dict[str, Any]]) -> None:
        if self._audit is None:
            self._audit = self._connect(self.audit_path)
        conn = self._audit
        conn.execute("BEGIN IMMEDIATE")
        try:
            rows = self._chain.rows(events)
            values = [value for row in rows for value in row]
            marks = "(" + ", ".join("?" * len(ENTRY_COLUMNS)) + ")"
            conn.execute(f"INSERT INTO audit_entries ({', '.join(ENTRY_COLUMNS)}) VALUES {', '.join([marks] * len(rows))}",
                         values)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            self._chain.heads.clear()  # read nothing back in a bench: a failed batch fails the run
            raise

    async def write(self, events: list[dict[str, Any]]) -> None:
        await asyncio.get_running_loop().run_in_executor(self._thread, self._write, events)


class PostgresStores:
    def __init__(self, cfg: dict[str, Any]) -> None:
        self.dsn, self.mode, self.durable = cfg["pg_dsn"], cfg["pg_audit"], cfg.get("durable", True)
        self._idle: list[Any] = []
        self._asks: dict[str, list[tuple[str, asyncio.Future[Any]]]] = {}
        self._chain = Chain(text_at=False)
        self._audit: Any = None
        cols = ", ".join(ENTRY_COLUMNS)
        self._insert = f"INSERT INTO floor.audit_entries ({cols}) VALUES ({', '.join(f'${i + 1}' for i in range(len(ENTRY_COLUMNS)))})"
        types = ("text", "bigint", "timestamp", "text", "text", "text", "text", "text", "text", "text", "text")
        self._unnest = (f"INSERT INTO floor.audit_entries ({cols}) SELECT * FROM unnest("
                        + ", ".join(f"${i + 1}::{t}[]" for i, t in enumerate(types)) + ")")
        self._key_rows = KEY_ROWS.format(s="floor.")

    async def setup(self, dek_row: tuple[Any, ...], key_row: tuple[Any, ...]) -> None:
        import asyncpg  # type: ignore[import-untyped]

        conn = await asyncpg.connect(self.dsn)
        await conn.execute("CREATE SCHEMA IF NOT EXISTS floor")
        for ddl in KEY_TABLES:
            await conn.execute(ddl.format(s="floor.", blob="bytea"))
        await conn.execute(AUDIT_TABLE.format(s="floor.", serial="bigserial", at="timestamp"))
        await conn.execute("INSERT INTO floor.patient_deks VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING", *dek_row)
        await conn.execute("INSERT INTO floor.object_keys VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING", *key_row)
        self._idle.append(conn)
        self._audit = await asyncpg.connect(self.dsn)
        if not self.durable:  # the bench's reference only: commits that do not wait for the WAL flush
            await self._audit.execute("SET synchronous_commit = off")

    async def key_row(self, tenant_id: str, patient_id: str, object_id: str) -> tuple[Any, ...] | None:
        """Joins the statement of this turn of the loop (sent once the turn is over)."""
        loop = asyncio.get_running_loop()
        if not self._asks:
            loop.call_soon(self._send)
        future = loop.create_future()
        self._asks.setdefault(tenant_id, []).append((object_id, future))
        rows = await future
        return next((tuple(r)[2:] for r in rows if r[0] == object_id and r[1] == patient_id), None)

    def _send(self) -> None:
        asks, self._asks = self._asks, {}
        for tenant_id, waiting in asks.items():
            asyncio.get_running_loop().create_task(self._read(tenant_id, waiting))

    async def _read(self, tenant_id: str, waiting: list[tuple[str, asyncio.Future[Any]]]) -> None:
        import asyncpg

        conn = self._idle.pop() if self._idle else await asyncpg.connect(self.dsn)
        try:
            rows = await conn.fetch(self._key_rows, tenant_id, list(dict.fromkeys(o for o, _ in waiting)))
        except Exception as exc:  # noqa: BLE001 — the reads waiting on this statement fail with it
            for _, future in waiting:
                future.set_exception(exc)
            conn.terminate()
            return
        self._idle.append(conn)
        for _, future in waiting:
            future.set_result(rows)

    async def write(self, events: list[dict[str, Any]]) -> None:
        rows = self._chain.rows(events)
        if self.mode == "unnest":  # one statement, its own transaction
            await self._audit.execute(self._unnest, *(list(column) for column in zip(*rows)))
            return
        async with self._audit.transaction():
            await self._audit.executemany(self._insert, rows)


async def make_app(cfg: dict[str, Any]) -> web.Application:
    stores: SqliteStores | PostgresStores = PostgresStores(cfg) if cfg.get("pg_dsn") else SqliteStores(cfg)
    tenant_id, patient_id, media_id, blob_id = cfg["tenant_id"], cfg["patient_id"], cfg["media_id"], cfg["blob_id"]
    object_key = Path(cfg["key_path"]).read_bytes()
    # The key hierarchy's two lower levels, written as the vault's key store holds them:
    # the DEK wrapped by the tenant KEK, the object key wrapped by the DEK, each bound to its ids.
    kek = AESGCM(bytes.fromhex(cfg["kek_hex"]))
    dek, dek_id, key_id = AESGCM.generate_key(bit_length=256), secrets.token_hex(16), secrets.token_hex(16)
    n1, n2 = secrets.token_bytes(12), secrets.token_bytes(12)
    dek_wrapped = n1 + kek.encrypt(n1, dek, aad("dek", tenant_id, patient_id, dek_id, 1))
    key_wrapped = n2 + AESGCM(dek).encrypt(n2, object_key, aad("object-key", tenant_id, patient_id, blob_id, dek_id, key_id))
    await stores.setup((tenant_id, patient_id, dek_id, 1, dek_wrapped), (key_id, tenant_id, patient_id, blob_id, dek_id, key_wrapped))
    del dek, object_key

    tokens = {cfg["token_sha256"]: (cfg["token_id"], tenant_id, cfg["role"])}  # the vault's token cache
    # the rendition cache: immutable fields of a ready rendition, never bytes or keys
    renditions = {(media_id, "256"): (tenant_id, patient_id, blob_id, Path(cfg["blob_path"]),
                                      '"' + hashlib.sha256(("etag\x1f" + blob_id).encode()).hexdigest()[:32] + '"')}
    ciphers: dict[str, AESGCM] = {}  # key id -> cipher of the unwrapped object key
    audit = GroupCommit(stores.write, hold=cfg.get("hold", True))

    def unwrap(tenant: str, patient: str, blob: str, row: tuple[Any, ...]) -> AESGCM:
        key_id, wrapped, dek_id, kek_version, dek_wrapped = row
        dek = kek.decrypt(dek_wrapped[:12], dek_wrapped[12:], aad("dek", tenant, patient, dek_id, kek_version))
        key = AESGCM(dek).decrypt(wrapped[:12], wrapped[12:], aad("object-key", tenant, patient, blob, dek_id, key_id))
        return AESGCM(key)

    async def thumbnail(request: web.Request) -> web.Response:
        auth = request.headers.get("Authorization", "")
        token = tokens.get(hashlib.sha256(auth[7:].encode()).hexdigest()) if auth.startswith("Bearer ") else None
        if token is None:
            raise web.HTTPUnauthorized(text='{"error":"unauthorized"}', content_type="application/json")
        token_id, tenant, role = token
        if role not in READ_ROLES:
            raise web.HTTPForbidden(text='{"error":"forbidden"}', content_type="application/json")
        media = request.match_info["media_id"]
        ready = renditions.get((media, request.query.get("size", "256")))
        if ready is None or ready[0] != tenant:
            raise web.HTTPNotFound(text='{"error":"not_found"}', content_type="application/json")
        _, patient, blob, path, etag = ready
        row = await stores.key_row(tenant, patient, blob)
        if row is None:
            raise web.HTTPGone(text='{"error":"gone"}', content_type="application/json")
        cipher = ciphers.get(row[0])
        if cipher is None:
            cipher = ciphers[row[0]] = unwrap(tenant, patient, blob, row)
        await audit.record({"tenant_id": tenant, "actor": token_id, "role": role, "action": "media.thumbnail",
                            "targets": '{"media_id":%s,"patient_id":%s,"rendition":"thumb256"}' % (_string(media), _string(patient)),
                            "outcome": "ok", "request_id": secrets.token_hex(12)})
        with open(path, "rb") as f:
            data = f.read()
        return web.Response(body=cipher.decrypt(data[:12], data[12:], b"thumb256"), content_type="image/jpeg",
                            headers={"ETag": etag, "Cache-Control": "private, no-cache"})

    async def stats(_app: web.Application) -> None:  # at exit, for the bench's report
        (Path(cfg["sqlite_dir"]) / "stats.json").write_text(json.dumps(
            {"commits": audit.commits, "entries": audit.entries, "commit_ms": 1000 * audit.writing / max(audit.commits, 1)}))

    app = web.Application()
    app.router.add_get("/v1/media/{media_id}/thumbnail", thumbnail)
    app.on_cleanup.append(stats)
    return app


def main() -> None:
    cfg = json.loads(Path(sys.argv[1]).read_text())
    web.run_app(make_app(cfg), host="127.0.0.1", port=cfg["port"], access_log=None, print=None)


if __name__ == "__main__":
    main()
