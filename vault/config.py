"""Settings, read from the environment once, into a frozen and validated object.

Nothing else in the vault reads ``os.environ``. Invalid configuration raises
:class:`vault.errors.ConfigError` naming the setting, so the service fails at start.

Each setting is declared once, on its field: its ``VAULT_*`` variable, how the variable
is read and checked, and its default (a plain default, or one derived from the settings
above it, such as the database URL from the data folder). ``from_env`` walks that table,
then runs the checks that involve more than one setting. A small table of our own rather
than pydantic-settings: the object stays a keyword-only frozen dataclass that tests build
and ``replace`` directly, every error stays a ``ConfigError`` naming the variable with
the same message, and no second way to spell a variable (prefixes, aliases, dotenv files,
JSON values) comes with it.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
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


Reader = Callable[[str, str], Any]
"""(variable name, non-empty raw value) -> the value, or raises ConfigError(name, ...)."""
Derived = Callable[[Mapping[str, Any], Mapping[str, str]], Any]
"""(settings read so far, environment) -> the default of a setting that depends on others."""


@dataclass(frozen=True)
class Variable:
    name: str
    read: Reader
    derive: Derived | None = None


def variable(name: str, read: Reader, *, derive: Derived | None = None) -> dict[str, Variable]:
    """A field's ``metadata``: the environment variable behind it. An unset or empty
    variable gives the field's default (or ``derive``'s)."""
    return {"variable": Variable(name, read, derive)}


# -- readers ---------------------------------------------------------------------------
def _integer(*, minimum: int, unit: int = 1) -> Reader:
    def read(name: str, raw: str) -> int:
        try:
            value = int(raw)
        except ValueError:
            raise ConfigError(name, "must be an integer") from None
        if value < minimum:
            raise ConfigError(name, f"must be at least {minimum}")
        return value * unit

    return read


def _whole_seconds(*, minimum: int) -> Reader:
    integer = _integer(minimum=minimum)
    return lambda name, raw: float(integer(name, raw))


def _seconds(name: str, raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(name, "must be a number of seconds") from None
    if not 0.1 <= value <= 3600:  # also refuses nan and inf
        raise ConfigError(name, "must be between 0.1 and 3600 seconds")
    return value


def _boolean(name: str, raw: str) -> bool:
    if raw.lower() in ("1", "true", "yes", "on"):
        return True
    if raw.lower() in ("0", "false", "no", "off"):
        return False
    raise ConfigError(name, "must be true or false")


def _choice(allowed: tuple[str, ...], *, upper: bool = False) -> Reader:
    def read(name: str, raw: str) -> str:
        value = raw.upper() if upper else raw
        if value not in allowed:
            raise ConfigError(name, f"must be one of {', '.join(allowed)}")
        return value

    return read


def _url(schemes: tuple[str, ...]) -> Reader:
    def read(name: str, raw: str) -> str:
        if urlsplit(raw).scheme not in schemes:
            raise ConfigError(name, f"scheme must be one of {', '.join(schemes)}")
        return raw

    return read


def _processes(name: str, raw: str) -> int:
    """A count of processes; ``auto`` or 0: one per CPU."""
    if raw.strip().lower() == "auto":
        return os.cpu_count() or 1
    value = _integer(minimum=0)(name, raw)
    return value or (os.cpu_count() or 1)


def _text(name: str, raw: str) -> str:
    return raw


def _directory(name: str, raw: str) -> Path:
    return Path(raw).expanduser().resolve()


def _model_file(name: str, raw: str) -> Path:
    if not Path(raw).is_file():
        raise ConfigError(name, f"no model file at {raw}")
    return Path(raw).resolve()


_HOST_NAME = re.compile(r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$")


def _allow_networks(name: str, raw: str) -> tuple[str, ...]:
    """Comma-separated CIDRs (or single addresses) and host names, normalised."""
    entries = []
    for part in (p.strip().lower() for p in raw.split(",")):
        if not part:
            continue
        try:
            network = ipaddress.ip_network(part, strict=False)
        except ValueError:
            if not _HOST_NAME.match(part.rstrip(".")) or part.replace(".", "").isdigit():
                raise ConfigError(name, "must be comma-separated CIDRs, addresses or host names") from None
            entries.append(part.rstrip("."))
            continue
        if network.prefixlen == 0:
            raise ConfigError(name, "a network of every address is not an allow-list")
        entries.append(str(network))
    return tuple(entries)


def _origins(name: str, raw: str) -> tuple[str, ...]:
    """Comma-separated web origins (``https://app.example:8443``), normalised; no wildcard."""
    origins = []
    for part in (p.strip() for p in raw.split(",")):
        if not part:
            continue
        parts = urlsplit(part)
        try:
            port = parts.port
        except ValueError:
            port = -1
        if (parts.scheme.lower() not in ("https", "http") or not parts.hostname or parts.path not in ("", "/") or port == -1
                or parts.query or parts.fragment or parts.username is not None or parts.password is not None):
            raise ConfigError(name, "must be comma-separated origins like https://app.example (no wildcard, no path)")
        default = 443 if parts.scheme.lower() == "https" else 80
        host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
        origins.append(f"{parts.scheme.lower()}://{host}" + (f":{port}" if port not in (None, default) else ""))
    return tuple(origins)


def _pem_file(name: str, raw: str) -> Path:
    if not Path(raw).is_file():
        raise ConfigError(name, f"no file at {raw}")
    return Path(raw).resolve()


def _modules(name: str, raw: str) -> tuple[str, ...]:
    modules = tuple(part.strip() for part in raw.split(",") if part.strip())
    for module in modules:
        if not all(piece.isidentifier() for piece in module.split(".")):
            raise ConfigError(name, "must be comma-separated dotted module names")
    return modules


def _token(name: str, raw: str) -> str:
    if len(raw) < 24 or not raw.isascii() or not raw.isprintable() or " " in raw:
        # Guessable or header-breaking tokens would expose queue sizes and tenant names.
        raise ConfigError(name, "must be at least 24 printable ASCII characters without spaces")
    return raw


# -- defaults derived from the settings above them ---------------------------------------
def _sqlite_in_data_dir(file: str) -> Derived:
    return lambda values, env: f"sqlite+aiosqlite:///{values['data_dir'] / file}"


def _keystore_default(values: Mapping[str, Any], env: Mapping[str, str]) -> str:
    database_url: str = values["database_url"]
    return _sqlite_in_data_dir("keys.sqlite3")(values, env) if database_url.startswith("sqlite") else database_url


def _journal_default(values: Mapping[str, Any], env: Mapping[str, str]) -> Path | None:
    """Beside a ``file:`` root keyring (never in the data folder); none for KMS/HSM."""
    url = urlsplit(values["root_key_url"])
    if url.scheme != "file" or not url.path:
        return None
    from urllib.parse import unquote

    keyring = Path(unquote(url.path))
    return keyring.with_name(keyring.name + ".shred-journal")


@dataclass(frozen=True, kw_only=True)
class Settings:
    data_dir: Path = field(metadata=variable("VAULT_DATA_DIR", _directory,
                                             derive=lambda values, env: _directory("VAULT_DATA_DIR", "./var")))
    database_url: str = field(metadata=variable("VAULT_DATABASE_URL", _url(DATABASE_SCHEMES),
                                                derive=_sqlite_in_data_dir("vault.sqlite3")))
    keystore_url: str = field(metadata=variable("VAULT_KEYSTORE_URL", _url(DATABASE_SCHEMES), derive=_keystore_default))
    storage_url: str = field(metadata=variable("VAULT_STORAGE_URL", _url(STORAGE_SCHEMES),
                                               derive=lambda values, env: (values["data_dir"] / "blobs").as_uri()))
    root_key_url: str = field(metadata=variable("VAULT_ROOT_KEY_URL", _url(ROOT_KEY_SCHEMES),
                                                derive=lambda values, env: default_keyring(values["data_dir"], env).as_uri()))
    env: str = field(default="development", metadata=variable("VAULT_ENV", _choice(ENVIRONMENTS)))
    log_level: str = field(default="INFO", metadata=variable("VAULT_LOG_LEVEL", _choice(LOG_LEVELS, upper=True)))
    max_photo_bytes: int = field(default=64 * MiB, metadata=variable("VAULT_MAX_PHOTO_BYTES", _integer(minimum=1024)))
    max_video_bytes: int = field(default=8 * 1024 * MiB,
                                 metadata=variable("VAULT_MAX_VIDEO_BYTES", _integer(minimum=1024)))
    max_json_bytes: int = field(default=64 * 1024, metadata=variable("VAULT_MAX_JSON_BYTES", _integer(minimum=1024)))
    max_pixels: int = field(default=100_000_000, metadata=variable("VAULT_MAX_PIXELS", _integer(minimum=1)))
    face_model: Path | None = field(default=None, metadata=variable("VAULT_FACE_MODEL", _model_file))
    backup_window_days: int = field(default=35, metadata=variable("VAULT_BACKUP_WINDOW", _integer(minimum=1)))
    kek_rotation_days: int = field(default=7, metadata=variable("VAULT_KEK_ROTATION_DAYS", _integer(minimum=1)))
    # every shred is also appended here, apart from backups (vault/backup/journal.py)
    shred_journal: Path | None = field(default=None, metadata=variable("VAULT_SHRED_JOURNAL", _directory,
                                                                       derive=_journal_default))
    shred_journal_s3: str | None = field(default=None, metadata=variable("VAULT_SHRED_JOURNAL_S3", _url(("s3",))))
    # Embedded (SQLite) runs its jobs inside `vault serve`; PostgreSQL has worker nodes.
    inprocess_jobs: bool = field(default=True, metadata=variable(
        "VAULT_INPROCESS_JOBS", _boolean, derive=lambda values, env: values["database_url"].startswith("sqlite")))
    key_cache_seconds: float = field(default=5.0,
                                     metadata=variable("VAULT_KEY_CACHE_SECONDS", _whole_seconds(minimum=0)))
    public_url: str | None = field(default=None, metadata=variable("VAULT_PUBLIC_URL", _text))
    job_lease_seconds: int = field(default=60, metadata=variable("VAULT_JOB_LEASE_SECONDS", _integer(minimum=1)))
    job_poll_ms: int = field(default=1000, metadata=variable("VAULT_JOB_POLL_MS", _integer(minimum=10)))
    # extra job modules, for tests and extensions
    worker_imports: tuple[str, ...] = field(default=(), metadata=variable("VAULT_WORKER_IMPORTS", _modules))
    # plain http to loopback webhooks: tests only
    webhooks_allow_http_loopback: bool = field(default=False,
                                               metadata=variable("VAULT_WEBHOOKS_ALLOW_HTTP_LOOPBACK", _boolean))
    # on-premises webhook receivers: private networks (CIDRs) and host names let through
    webhooks_allow_networks: tuple[str, ...] = field(default=(), metadata=variable(
        "VAULT_WEBHOOKS_ALLOW_NETWORKS", _allow_networks))
    # web origins whose pages may call the API with a bearer token (CORS); none by default
    cors_origins: tuple[str, ...] = field(default=(), metadata=variable("VAULT_CORS_ORIGINS", _origins))
    # extra CA certificates (PEM) trusted for webhook receivers, e.g. a clinic's own CA
    webhooks_ca_file: Path | None = field(default=None, metadata=variable("VAULT_WEBHOOKS_CA_FILE", _pem_file))
    # DICOM export to a PACS (docs/integration.md): the DICOMweb base URL (STOW-RS goes to
    # <url>/studies), https (plain http to loopback: tests only); optional basic auth or bearer
    # token; extra CA (PEM); and the private networks / host names the PACS may be on (the
    # webhooks' SSRF guard)
    dicomweb_url: str | None = field(default=None, metadata=variable("VAULT_DICOMWEB_URL", _url(("https", "http"))))
    dicomweb_allow_http_loopback: bool = field(default=False,
                                               metadata=variable("VAULT_DICOMWEB_ALLOW_HTTP_LOOPBACK", _boolean))
    dicomweb_username: str | None = field(default=None, metadata=variable("VAULT_DICOMWEB_USERNAME", _text))
    dicomweb_password: str | None = field(default=None, repr=False, metadata=variable("VAULT_DICOMWEB_PASSWORD", _text))
    dicomweb_token: str | None = field(default=None, repr=False, metadata=variable("VAULT_DICOMWEB_TOKEN", _text))
    dicomweb_ca_file: Path | None = field(default=None, metadata=variable("VAULT_DICOMWEB_CA_FILE", _pem_file))
    dicomweb_allow_networks: tuple[str, ...] = field(default=(), metadata=variable(
        "VAULT_DICOMWEB_ALLOW_NETWORKS", _allow_networks))
    # patients one unreviewed retention sweep may erase
    retention_max_erasures: int = field(default=10,
                                        metadata=variable("VAULT_RETENTION_MAX_ERASURES", _integer(minimum=1)))
    # an unread subject-access export is shredded after this
    export_ttl_hours: int = field(default=72, metadata=variable("VAULT_EXPORT_TTL_HOURS", _integer(minimum=1)))
    # a recall not yet taken down is re-notified to the webhooks this long after (and again every this long)
    recall_renotify_hours: int = field(default=24,
                                       metadata=variable("VAULT_RECALL_RENOTIFY_HOURS", _integer(minimum=1)))
    # staff web sessions (docs/staff.md): idle and absolute expiry
    staff_idle_seconds: int = field(default=1800, metadata=variable("VAULT_STAFF_IDLE_SECONDS", _integer(minimum=60)))
    staff_session_seconds: int = field(default=43200,
                                       metadata=variable("VAULT_STAFF_SESSION_SECONDS", _integer(minimum=300)))
    # a blob writer's lease, extended every third of it while it writes
    blob_lease_seconds: int = field(default=120, metadata=variable("VAULT_BLOB_LEASE_SECONDS", _integer(minimum=1)))
    # leftovers go this long after their writer's lease expired
    leftover_grace_seconds: int = field(default=3600,
                                        metadata=variable("VAULT_LEFTOVER_GRACE_SECONDS", _integer(minimum=0)))
    # how often the leftover sweep runs
    leftover_sweep_seconds: int = field(default=900,
                                        metadata=variable("VAULT_LEFTOVER_SWEEP_SECONDS", _integer(minimum=1)))
    # Slow or stalled clients (docs/http.md): a request head must arrive whole within
    # http_header_timeout s; each 64 KiB of a body (or its end) within http_body_timeout s.
    http_header_timeout: float = field(default=10.0, metadata=variable("VAULT_HTTP_HEADER_TIMEOUT", _seconds))
    http_body_timeout: float = field(default=20.0, metadata=variable("VAULT_HTTP_BODY_TIMEOUT", _seconds))
    # on SIGTERM, requests in flight get this long to finish (the systemd unit allows 35 s in all)
    shutdown_timeout: float = field(default=20.0, metadata=variable("VAULT_SHUTDOWN_TIMEOUT", _seconds))
    # uploads in progress on this node (503 beyond)
    max_uploads: int = field(default=32, metadata=variable("VAULT_MAX_UPLOADS", _integer(minimum=1)))
    # uploads in progress per token on this node (429 beyond)
    max_uploads_per_token: int = field(default=4,
                                       metadata=variable("VAULT_MAX_UPLOADS_PER_TOKEN", _integer(minimum=1)))
    # photos being handled at once, all uploads together (3 working copies each)
    upload_memory_bytes: int = field(default=512 * MiB,
                                     metadata=variable("VAULT_UPLOAD_MEMORY_BYTES", _integer(minimum=1024)))
    # Decoder worker processes (docs/media.md): how many, each item's wall time (photos,
    # probes, posters; remuxing a video gets decoder_video_seconds), each worker's address
    # space, items before a worker is replaced, and the bounded wait for a free worker.
    decoder_workers: int = field(default_factory=lambda: max(2, os.cpu_count() or 2),
                                 metadata=variable("VAULT_DECODER_WORKERS", _integer(minimum=1)))
    decoder_item_seconds: float = field(default=120.0, metadata=variable("VAULT_DECODER_ITEM_SECONDS", _seconds))
    decoder_video_seconds: float = field(default=3600.0, metadata=variable("VAULT_DECODER_VIDEO_SECONDS", _seconds))
    decoder_memory_bytes: int = field(default=4096 * MiB,
                                      metadata=variable("VAULT_DECODER_MEMORY_MB", _integer(minimum=256, unit=MiB)))
    decoder_recycle_after: int = field(default=200,
                                       metadata=variable("VAULT_DECODER_RECYCLE_AFTER", _integer(minimum=1)))
    decoder_queue_seconds: float = field(default=30.0, metadata=variable("VAULT_DECODER_QUEUE_SECONDS", _seconds))
    # GET /metrics answers only this bearer token; unset, /metrics is 404 (docs/operations.md).
    # repr=False: a printed Settings must not leak it.
    metrics_token: str | None = field(default=None, repr=False, metadata=variable("VAULT_METRICS_TOKEN", _token))
    # bound on a scrape's database and key-store reads; past it the scrape says
    # vault_metrics_refresh_ok 0 instead of hanging (docs/operations.md)
    metrics_refresh_seconds: float = field(default=2.0, metadata=variable("VAULT_METRICS_REFRESH_SECONDS", _seconds))
    # HTTP serving processes of this node (docs/operations.md, "Several processes on one
    # node"); `vault serve --processes N` overrides it. auto or 0: one per CPU.
    http_processes: int = field(default=1, metadata=variable("VAULT_HTTP_PROCESSES", _processes))
    # Set by `vault serve` for each of its serving processes when it runs several (not from
    # the environment): the private folders the siblings share for cache invalidation
    # (unix sockets) and for Prometheus' multiprocess files, this process's name there, and
    # the socket of the node's one audit writer process (vault.audit.node).
    siblings_dir: Path | None = None
    metrics_dir: Path | None = None
    audit_socket: Path | None = None
    process_name: str = ""
    extra: Mapping[str, str] = field(default_factory=dict)

    @property
    def production(self) -> bool:
        return self.env == "production"

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @classmethod
    def variables(cls) -> dict[str, Variable]:
        """Every ``VAULT_*`` variable, by the name of the setting it fills."""
        return {f.name: f.metadata["variable"] for f in fields(cls) if "variable" in f.metadata}

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for name, var in cls.variables().items():
            raw = env.get(var.name)
            if raw:  # unset and empty alike mean the default
                values[name] = var.read(var.name, raw)
            elif var.derive is not None:
                values[name] = var.derive(values, env)
        settings = cls(**values)
        settings._check()
        return settings

    def _check(self) -> None:
        """What no single variable can check on its own."""
        if self.production and urlsplit(self.root_key_url).scheme == "file":
            raise ConfigError(
                "VAULT_ROOT_KEY_URL",
                "a local root-key file is for development only; use aws-kms: or pkcs11: in production",
            )
        if self.kek_rotation_days > self.backup_window_days:
            # A version must be retired before it is old enough to destroy, or erasures
            # would stay recoverable past the time their receipts promise.
            raise ConfigError("VAULT_KEK_ROTATION_DAYS", "must not be longer than VAULT_BACKUP_WINDOW")
        if self.upload_memory_bytes < 3 * self.max_photo_bytes:  # vault.http.limits.WORKING_COPIES
            # Otherwise a photo at the size cap could never be accepted.
            raise ConfigError("VAULT_UPLOAD_MEMORY_BYTES", "must be at least 3 x VAULT_MAX_PHOTO_BYTES (a photo's working copies)")
        if self.shred_journal_s3 is not None and self.shred_journal_s3 == self.storage_url:
            # The leftover sweep would take journal objects for blobs without a row.
            raise ConfigError("VAULT_SHRED_JOURNAL_S3", "must name another bucket or prefix than VAULT_STORAGE_URL")
        if self.dicomweb_allow_http_loopback and self.production:
            raise ConfigError("VAULT_DICOMWEB_ALLOW_HTTP_LOOPBACK", "plain-http loopback DICOMweb is for tests, not production")
        if (self.dicomweb_url or "").lower().startswith("http:") and not self.dicomweb_allow_http_loopback:
            raise ConfigError("VAULT_DICOMWEB_URL", "must be https (a PACS on plain http: put a TLS proxy in front of it)")
        if (self.dicomweb_username is None) != (self.dicomweb_password is None):
            raise ConfigError("VAULT_DICOMWEB_PASSWORD", "set both VAULT_DICOMWEB_USERNAME and VAULT_DICOMWEB_PASSWORD, or neither")
        if self.dicomweb_token is not None and self.dicomweb_username is not None:
            raise ConfigError("VAULT_DICOMWEB_TOKEN", "use either a bearer token or a username and password, not both")
        if self.webhooks_allow_http_loopback and self.production:
            raise ConfigError("VAULT_WEBHOOKS_ALLOW_HTTP_LOOPBACK", "plain-http loopback webhooks are for tests, not production")

    def replace(self, **changes: Any) -> Settings:
        from dataclasses import replace

        return replace(self, **changes)
