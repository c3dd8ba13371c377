"""Settings, read from the environment once, into a frozen and validated object.

Nothing else in the vault reads ``os.environ``. Invalid configuration raises
:class:`vault.errors.ConfigError` naming the setting, so the service fails at start.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from vault.errors import ConfigError

ENVIRONMENTS = ("development", "production")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
DATABASE_SCHEMES = ("sqlite+aiosqlite", "postgresql+asyncpg")
STORAGE_SCHEMES = ("file", "s3")
ROOT_KEY_SCHEMES = ("file", "aws-kms", "pkcs11")

MiB = 1024 * 1024


def default_keyring(data_dir: Path, env: Mapping[str, str]) -> Path:
    """The embedded default's root keyring: outside the data folder, under the user's data
    home, so a copy of the data folder alone decrypts nothing. One keyring per data
    folder (named by a hash of its path): two vaults on one machine never share one."""
    import hashlib

    home = Path(env.get("XDG_DATA_HOME") or Path.home() / ".local" / "share").expanduser()
    return home / "clinical-photo-vault" / "keyring" / hashlib.sha256(str(data_dir).encode()).hexdigest()[:16]


@dataclass(frozen=True, kw_only=True)
class Settings:
    data_dir: Path
    database_url: str
    keystore_url: str
    storage_url: str
    root_key_url: str
    env: str = "development"
    log_level: str = "INFO"
    max_photo_bytes: int = 64 * MiB
    max_video_bytes: int = 8 * 1024 * MiB
    max_json_bytes: int = 64 * 1024
    max_pixels: int = 100_000_000
    face_model: Path | None = None
    backup_window_days: int = 35
    kek_rotation_days: int = 7
    inprocess_jobs: bool = True
    key_cache_seconds: float = 5.0
    public_url: str | None = None
    job_lease_seconds: int = 60
    job_poll_ms: int = 1000
    worker_imports: tuple[str, ...] = ()  # extra job modules, for tests and extensions
    webhooks_allow_http_loopback: bool = False  # plain http to loopback webhooks: tests only
    retention_max_erasures: int = 10  # patients one unreviewed retention sweep may erase
    export_ttl_hours: int = 72  # an unread subject-access export is shredded after this
    blob_lease_seconds: int = 120  # a blob writer's lease, extended every third of it while it writes
    leftover_grace_seconds: int = 3600  # leftovers go this long after their writer's lease expired
    leftover_sweep_seconds: int = 900  # how often the leftover sweep runs
    # Slow or stalled clients (docs/http.md): a request head must arrive whole within
    # http_header_timeout s; each 64 KiB of a body (or its end) within http_body_timeout s.
    http_header_timeout: float = 10.0
    http_body_timeout: float = 20.0
    max_uploads: int = 32  # uploads in progress on this node (503 beyond)
    max_uploads_per_token: int = 4  # uploads in progress per token on this node (429 beyond)
    upload_memory_bytes: int = 512 * MiB  # photos being handled at once, all uploads together (3 working copies each)
    # Decoder worker processes (docs/media.md): how many, each item's wall time (photos,
    # probes, posters; remuxing a video gets decoder_video_seconds), each worker's address
    # space, items before a worker is replaced, and the bounded wait for a free worker.
    decoder_workers: int = field(default_factory=lambda: max(2, os.cpu_count() or 2))
    decoder_item_seconds: float = 120.0
    decoder_video_seconds: float = 3600.0
    decoder_memory_bytes: int = 4096 * MiB
    decoder_recycle_after: int = 200
    decoder_queue_seconds: float = 30.0
    # GET /metrics answers only this bearer token; unset, /metrics is 404 (docs/operations.md).
    # repr=False: a printed Settings must not leak it.
    metrics_token: str | None = field(default=None, repr=False)
    extra: Mapping[str, str] = field(default_factory=dict)

    @property
    def production(self) -> bool:
        return self.env == "production"

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        get = lambda name, default=None: (env.get(name) or default)  # noqa: E731

        data_dir = Path(get("VAULT_DATA_DIR", "./var")).expanduser().resolve()
        mode = get("VAULT_ENV", "development")
        _choice("VAULT_ENV", mode, ENVIRONMENTS)
        level = get("VAULT_LOG_LEVEL", "INFO").upper()
        _choice("VAULT_LOG_LEVEL", level, LOG_LEVELS)

        database_url = get("VAULT_DATABASE_URL", f"sqlite+aiosqlite:///{data_dir / 'vault.sqlite3'}")
        _scheme("VAULT_DATABASE_URL", database_url, DATABASE_SCHEMES)
        keystore_default = (
            f"sqlite+aiosqlite:///{data_dir / 'keys.sqlite3'}"
            if database_url.startswith("sqlite")
            else database_url
        )
        keystore_url = get("VAULT_KEYSTORE_URL", keystore_default)
        _scheme("VAULT_KEYSTORE_URL", keystore_url, DATABASE_SCHEMES)
        storage_url = get("VAULT_STORAGE_URL", (data_dir / "blobs").as_uri())
        _scheme("VAULT_STORAGE_URL", storage_url, STORAGE_SCHEMES)
        root_key_url = get("VAULT_ROOT_KEY_URL", default_keyring(data_dir, env).as_uri())
        _scheme("VAULT_ROOT_KEY_URL", root_key_url, ROOT_KEY_SCHEMES)
        if mode == "production" and urlsplit(root_key_url).scheme == "file":
            raise ConfigError(
                "VAULT_ROOT_KEY_URL",
                "a local root-key file is for development only; use aws-kms: or pkcs11: in production",
            )

        backup_window_days = _int(env, "VAULT_BACKUP_WINDOW", 35, minimum=1)
        kek_rotation_days = _int(env, "VAULT_KEK_ROTATION_DAYS", 7, minimum=1)
        if kek_rotation_days > backup_window_days:
            # A version must be retired before it is old enough to destroy, or erasures
            # would stay recoverable past the time their receipts promise.
            raise ConfigError("VAULT_KEK_ROTATION_DAYS", "must not be longer than VAULT_BACKUP_WINDOW")

        face_model = get("VAULT_FACE_MODEL")
        if face_model is not None and not Path(face_model).is_file():
            raise ConfigError("VAULT_FACE_MODEL", f"no model file at {face_model}")

        max_photo_bytes = _int(env, "VAULT_MAX_PHOTO_BYTES", 64 * MiB, minimum=1024)
        upload_memory_bytes = _int(env, "VAULT_UPLOAD_MEMORY_BYTES", 512 * MiB, minimum=1024)
        if upload_memory_bytes < 3 * max_photo_bytes:  # vault.http.limits.WORKING_COPIES
            # Otherwise a photo at the size cap could never be accepted.
            raise ConfigError("VAULT_UPLOAD_MEMORY_BYTES", "must be at least 3 x VAULT_MAX_PHOTO_BYTES (a photo's working copies)")

        return cls(
            data_dir=data_dir,
            database_url=database_url,
            keystore_url=keystore_url,
            storage_url=storage_url,
            root_key_url=root_key_url,
            env=mode,
            log_level=level,
            max_photo_bytes=max_photo_bytes,
            max_video_bytes=_int(env, "VAULT_MAX_VIDEO_BYTES", 8 * 1024 * MiB, minimum=1024),
            max_json_bytes=_int(env, "VAULT_MAX_JSON_BYTES", 64 * 1024, minimum=1024),
            max_pixels=_int(env, "VAULT_MAX_PIXELS", 100_000_000, minimum=1),
            face_model=Path(face_model).resolve() if face_model else None,
            backup_window_days=backup_window_days,
            kek_rotation_days=kek_rotation_days,
            inprocess_jobs=_bool(env, "VAULT_INPROCESS_JOBS", default=database_url.startswith("sqlite")),
            key_cache_seconds=float(_int(env, "VAULT_KEY_CACHE_SECONDS", 5, minimum=0)),
            public_url=get("VAULT_PUBLIC_URL"),
            job_lease_seconds=_int(env, "VAULT_JOB_LEASE_SECONDS", 60, minimum=1),
            job_poll_ms=_int(env, "VAULT_JOB_POLL_MS", 1000, minimum=10),
            worker_imports=_modules("VAULT_WORKER_IMPORTS", get("VAULT_WORKER_IMPORTS", "")),
            webhooks_allow_http_loopback=_loopback_webhooks(env, mode),
            retention_max_erasures=_int(env, "VAULT_RETENTION_MAX_ERASURES", 10, minimum=1),
            export_ttl_hours=_int(env, "VAULT_EXPORT_TTL_HOURS", 72, minimum=1),
            blob_lease_seconds=_int(env, "VAULT_BLOB_LEASE_SECONDS", 120, minimum=1),
            leftover_grace_seconds=_int(env, "VAULT_LEFTOVER_GRACE_SECONDS", 3600, minimum=0),
            leftover_sweep_seconds=_int(env, "VAULT_LEFTOVER_SWEEP_SECONDS", 900, minimum=1),
            http_header_timeout=_seconds(env, "VAULT_HTTP_HEADER_TIMEOUT", 10.0),
            http_body_timeout=_seconds(env, "VAULT_HTTP_BODY_TIMEOUT", 20.0),
            max_uploads=_int(env, "VAULT_MAX_UPLOADS", 32, minimum=1),
            max_uploads_per_token=_int(env, "VAULT_MAX_UPLOADS_PER_TOKEN", 4, minimum=1),
            upload_memory_bytes=upload_memory_bytes,
            decoder_workers=_int(env, "VAULT_DECODER_WORKERS", max(2, os.cpu_count() or 2), minimum=1),
            decoder_item_seconds=_seconds(env, "VAULT_DECODER_ITEM_SECONDS", 120.0),
            decoder_video_seconds=_seconds(env, "VAULT_DECODER_VIDEO_SECONDS", 3600.0),
            decoder_memory_bytes=_int(env, "VAULT_DECODER_MEMORY_MB", 4096, minimum=256) * MiB,
            decoder_recycle_after=_int(env, "VAULT_DECODER_RECYCLE_AFTER", 200, minimum=1),
            decoder_queue_seconds=_seconds(env, "VAULT_DECODER_QUEUE_SECONDS", 30.0),
            metrics_token=_metrics_token(env),
        )

    def replace(self, **changes) -> Settings:
        from dataclasses import replace

        return replace(self, **changes)


def _choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(name, f"must be one of {', '.join(allowed)}")


def _scheme(name: str, url: str, allowed: tuple[str, ...]) -> None:
    scheme = urlsplit(url).scheme
    if scheme not in allowed:
        raise ConfigError(name, f"scheme must be one of {', '.join(allowed)}")


def _int(env: Mapping[str, str], name: str, default: int, *, minimum: int) -> int:
    raw = env.get(name)
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(name, "must be an integer") from None
    if value < minimum:
        raise ConfigError(name, f"must be at least {minimum}")
    return value


def _seconds(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(name, "must be a number of seconds") from None
    if not 0.1 <= value <= 3600:  # also refuses nan and inf
        raise ConfigError(name, "must be between 0.1 and 3600 seconds")
    return value


def _modules(name: str, raw: str) -> tuple[str, ...]:
    modules = tuple(part.strip() for part in raw.split(",") if part.strip())
    for module in modules:
        if not all(piece.isidentifier() for piece in module.split(".")):
            raise ConfigError(name, "must be comma-separated dotted module names")
    return modules


def _metrics_token(env: Mapping[str, str]) -> str | None:
    token = env.get("VAULT_METRICS_TOKEN") or None
    if token is not None and (len(token) < 24 or not token.isascii() or not token.isprintable() or " " in token):
        # Guessable or header-breaking tokens would expose queue sizes and tenant names.
        raise ConfigError("VAULT_METRICS_TOKEN", "must be at least 24 printable ASCII characters without spaces")
    return token


def _loopback_webhooks(env: Mapping[str, str], mode: str) -> bool:
    allowed = _bool(env, "VAULT_WEBHOOKS_ALLOW_HTTP_LOOPBACK", default=False)
    if allowed and mode == "production":
        raise ConfigError("VAULT_WEBHOOKS_ALLOW_HTTP_LOOPBACK", "plain-http loopback webhooks are for tests, not production")
    return allowed


def _bool(env: Mapping[str, str], name: str, *, default: bool) -> bool:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    if raw.lower() in ("1", "true", "yes", "on"):
        return True
    if raw.lower() in ("0", "false", "no", "off"):
        return False
    raise ConfigError(name, "must be true or false")
