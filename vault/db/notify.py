"""Cache invalidation across nodes: named channels, PostgreSQL ``LISTEN/NOTIFY`` between
processes, or in process on SQLite (the embedded default runs one node).

A cache subscribes to a channel with two callbacks: ``on_message(payload)`` drops what
the payload names, ``on_reset()`` drops everything (messages may have been missed). A
change is announced with :meth:`Notifier.publish_in` inside the write transaction that
makes it — delivered to every node, this one included, when that transaction commits and
never if it rolls back — or with :meth:`Notifier.publish` after the fact.

A cache asks :meth:`Notifier.cache_seconds` how long it may trust an entry:

* PostgreSQL, listener connected and answering its pings: as long as the cache likes;
  a change on any node reaches it within the NOTIFY round trip (milliseconds).
* PostgreSQL, listener down (or silent for :data:`STALE_AFTER` s): 0 — no caching until it
  is back, and on reconnecting every subscriber is reset (what was announced meanwhile
  is lost). A dedicated asyncpg connection, reconnected with capped backoff.
* SQLite: at most :data:`LOCAL_BOUND` s. Changes made by this process are delivered at
  once, and to the sibling serving processes of a ``vault serve --processes N`` at once
  (:mod:`vault.db.siblings`); another process on the same files (the ``vault`` CLI) is
  not heard.

Payloads are ids and small words, never a secret: a NOTIFY payload can reach the
database server's statement log.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import event, func, select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession

from vault.db.engine import Database

log = logging.getLogger("vault.notify")

#: the listener pings its connection this often ...
PING_SECONDS = 0.5
#: ... and caches stop trusting it when no ping succeeded for this long
STALE_AFTER = 1.5
#: reconnect backoff: first wait and cap (seconds)
BACKOFF_FIRST, BACKOFF_CAP = 0.2, 5.0
#: SQLite: how long an entry may be trusted (another process's changes are not heard)
LOCAL_BOUND = 1.0
_CHANNEL = re.compile(r"^vault_[a-z0-9_]{1,50}$")
_PENDING = "vault_notify_pending"

#: channels in use (others may add theirs: a name matching ``vault_[a-z0-9_]+``)
TOKENS = "vault_tokens"
KEYS = "vault_keys"


@dataclass(frozen=True)
class _Subscriber:
    on_message: Callable[[str], None]
    on_reset: Callable[[], None]


class Notifier:
    """The in-process hub; :class:`PgNotifier` adds the database channel."""

    def __init__(self) -> None:
        self._subscribers: dict[str, list[_Subscriber]] = {}
        self.delivered = 0  # messages handed to subscribers (this process), for tests and metrics

    # -- subscribing -----------------------------------------------------------------
    def subscribe(self, channel: str, on_message: Callable[[str], None], on_reset: Callable[[], None]) -> None:
        _check(channel)
        self._subscribers.setdefault(channel, []).append(_Subscriber(on_message, on_reset))
        self._channels_changed()

    @property
    def channels(self) -> list[str]:
        return sorted(self._subscribers)

    # -- trust -----------------------------------------------------------------------
    def cache_seconds(self, wanted: float) -> float:
        """How long a cache may trust an entry now (0: do not cache)."""
        return min(wanted, LOCAL_BOUND)

    @property
    def listening(self) -> bool:
        """True when changes made by other processes are heard."""
        return False

    # -- publishing ------------------------------------------------------------------
    async def publish_in(self, session: AsyncSession, channel: str, payload: str) -> None:
        """Announce a change made in ``session``'s write transaction: delivered on commit."""
        _check(channel)
        _check_payload(payload)
        pending = session.info.get(_PENDING)
        if pending is None:
            pending = session.info[_PENDING] = []
            sync = session.sync_session
            event.listen(sync, "after_commit", self._after_commit)
            event.listen(sync, "after_rollback", _forget)
        pending.append((channel, payload))

    async def publish(self, channel: str, payload: str) -> None:
        """Announce a change already made (in its own transaction, or outside the database)."""
        _check(channel)
        _check_payload(payload)
        self.announce(channel, payload)

    def _after_commit(self, sync_session: Any) -> None:
        for channel, payload in sync_session.info.pop(_PENDING, []):
            self.announce(channel, payload)

    def announce(self, channel: str, payload: str) -> None:
        """A change this process made: to its own subscribers (and, in
        :class:`vault.db.siblings.SiblingNotifier`, to its sibling processes')."""
        self.deliver(channel, payload)

    def deliver(self, channel: str, payload: str) -> None:
        for subscriber in self._subscribers.get(channel, ()):
            try:
                subscriber.on_message(payload)
            except Exception:  # noqa: BLE001 - one bad subscriber must not silence the others
                log.exception("cache invalidation subscriber failed", extra={"channel": channel})
        self.delivered += 1

    def reset_all(self) -> None:
        for subscribers in self._subscribers.values():
            for subscriber in subscribers:
                try:
                    subscriber.on_reset()
                except Exception:  # noqa: BLE001
                    log.exception("cache reset failed")

    # -- life ------------------------------------------------------------------------
    def _channels_changed(self) -> None:
        pass

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass


class PgNotifier(Notifier):
    """LISTEN on a dedicated asyncpg connection; NOTIFY through the caller's transaction."""

    def __init__(self, db: Database) -> None:
        super().__init__()
        self._db = db
        url = make_url(db.url)
        self._connect_args = dict(host=url.host or "127.0.0.1", port=url.port or 5432, user=url.username,
                                  password=url.password, database=url.database)
        self._task: asyncio.Task[None] | None = None
        self._conn: Any = None
        self._listening = False
        self._last_ok = float("-inf")
        self._restart = asyncio.Event()
        self.connects = 0  # successful (re)connections, for tests

    def cache_seconds(self, wanted: float) -> float:
        return wanted if self.listening else 0.0

    @property
    def listening(self) -> bool:
        return self._listening and time.monotonic() - self._last_ok < STALE_AFTER

    async def publish_in(self, session: AsyncSession, channel: str, payload: str) -> None:
        await super().publish_in(session, channel, payload)
        await session.execute(select(func.pg_notify(channel, payload)))

    async def publish(self, channel: str, payload: str) -> None:
        _check(channel)
        _check_payload(payload)
        try:
            async with self._db.transaction() as session:
                await session.execute(select(func.pg_notify(channel, payload)))
        except (OSError, asyncio.TimeoutError, SQLAlchemyError) as exc:
            # The change itself is made; other nodes' caches expire or are reset on reconnect.
            log.warning("could not announce a change to other nodes", extra={"channel": channel,
                                                                            "reason": type(exc).__name__})
        self.deliver(channel, payload)

    def _channels_changed(self) -> None:
        self._restart.set()  # a new channel: listen again with every channel

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="cache invalidation listener")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        await self._drop()

    async def _run(self) -> None:
        import asyncpg  # type: ignore[import-untyped]

        backoff = BACKOFF_FIRST
        while True:
            try:
                self._restart.clear()
                connecting = asyncio.ensure_future(asyncpg.connect(**self._connect_args, timeout=5))
                try:
                    # shielded: a close() arriving mid-connect must not leave a half-made connection open
                    conn = self._conn = await asyncio.shield(connecting)
                except asyncio.CancelledError:
                    connecting.add_done_callback(_terminate_when_made)
                    raise
                for channel in self.channels:
                    await conn.add_listener(channel, self._on_notify)
                self._listening = True
                self._last_ok = time.monotonic()
                self.connects += 1
                # Whatever was announced while nobody listened is lost: start over.
                self.reset_all()
                if self.connects > 1:
                    log.info("cache invalidation listener reconnected")
                backoff = BACKOFF_FIRST
                while not conn.is_closed() and not self._restart.is_set():
                    try:
                        await asyncio.wait_for(self._restart.wait(), PING_SECONDS)
                    except asyncio.TimeoutError:
                        pass
                    await asyncio.wait_for(conn.fetchval("SELECT 1"), STALE_AFTER)
                    self._last_ok = time.monotonic()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - whatever broke, the listener must come back
                log.warning("cache invalidation listener lost its connection; caches are off until it is back",
                            extra={"reason": type(exc).__name__, "retry_s": backoff})
            await self._drop()
            if not self._restart.is_set():
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_CAP)

    def _on_notify(self, _conn: Any, _pid: int, channel: str, payload: str) -> None:
        self.deliver(channel, payload)

    async def _drop(self) -> None:
        self._listening = False
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            # terminate, not close(): nothing is pending on a listening connection, and a
            # graceful close could wait on a cancelled ping without bound
            conn.terminate()


def open_notifier(db: Database, *, siblings: Path | None = None, name: str = "") -> Notifier:
    """PostgreSQL: NOTIFY reaches every process. SQLite: in process, and to the sibling
    serving processes in ``siblings`` when ``vault serve`` runs several."""
    if db.dialect != "sqlite":
        return PgNotifier(db)
    if siblings is not None:
        from vault.db.siblings import SiblingNotifier

        return SiblingNotifier(siblings, name)
    return Notifier()


def _terminate_when_made(connecting: asyncio.Future[Any]) -> None:
    if not connecting.cancelled() and connecting.exception() is None:
        connecting.result().terminate()


def _forget(sync_session: Any) -> None:
    sync_session.info.pop(_PENDING, None)


def _check(channel: str) -> None:
    if not _CHANNEL.match(channel):
        raise ValueError(f"bad channel name {channel!r}")


def _check_payload(payload: str) -> None:
    if len(payload.encode()) > 1000:
        raise ValueError("a notification payload is an id or two, not data")


def watch_key_cache(notifier: Notifier, keys: Any) -> None:
    """Wire a key store's cache (keys/cache.py) to the ``vault_keys`` channel: scopes this
    process destroys are announced, scopes announced by any process are evicted here."""
    from keys.cache import decode_scope, encode_scope

    cache = keys._cache  # keys/ knows nothing of the vault: the hooks are plain callables

    async def announce(scope: tuple[str, ...]) -> None:
        await notifier.publish(KEYS, encode_scope(scope))

    def heard(payload: str) -> None:
        cache.evict_scope(decode_scope(payload))

    cache.announce = announce
    notifier.subscribe(KEYS, heard, cache.clear)
