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
ROOT_KEY_SCHEMES = ("file", "aws-kms")

MiB = 1024 * 1024


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
        root_key_url = get("VAULT_ROOT_KEY_URL", (data_dir / "root.key").as_uri())
        _scheme("VAULT_ROOT_KEY_URL", root_key_url, ROOT_KEY_SCHEMES)
        if mode == "production" and urlsplit(root_key_url).scheme == "file":
            raise ConfigError(
                "VAULT_ROOT_KEY_URL",
                "a local root-key file is for development only; use aws-kms: in production",
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

        return cls(
            data_dir=data_dir,
            database_url=database_url,
            keystore_url=keystore_url,
            storage_url=storage_url,
            root_key_url=root_key_url,
            env=mode,
            log_level=level,
            max_photo_bytes=_int(env, "VAULT_MAX_PHOTO_BYTES", 64 * MiB, minimum=1024),
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


def _modules(name: str, raw: str) -> tuple[str, ...]:
    modules = tuple(part.strip() for part in raw.split(",") if part.strip())
    for module in modules:
        if not all(piece.isidentifier() for piece in module.split(".")):
            raise ConfigError(name, "must be comma-separated dotted module names")
    return modules


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
