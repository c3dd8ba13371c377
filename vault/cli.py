"""The ``vault`` command: serve, migrate, tenants, tokens, audit, keys, jobs.

Secrets (tokens) are printed to standard output only, never logged. The token of
``vault token create`` is alone on the last line so scripts can take it with
``tail -n1``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import subprocess
import sys
from contextlib import suppress
from pathlib import Path

from keys.errors import KeysError
from vault import cli_backup, cli_keys, cli_ops, cli_staff
from vault.cli_runtime import request_id, require_data, run_with_runtime
from vault.config import Settings
from vault.errors import ConfigError, VaultError


def disable_core_dumps() -> None:
    # A core dump would write decrypted photos and unwrapped keys to disk; and no
    # same-user process may ptrace us or read /proc/PID/mem (every vault command holds
    # keys, `vault serve` and `vault worker` all of them).
    from vault.pipeline.sandbox import set_not_dumpable

    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    set_not_dumpable()


def prepare_data_dir(settings: Settings) -> None:
    settings.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    if settings.is_sqlite:
        # SQLite creates its file with the umask (often 0644) and gives -wal/-shm the
        # main file's mode: create it 0600 first, as the key store does.
        from sqlalchemy.engine import make_url

        database = Path(make_url(settings.database_url).database or "")
        database.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        with suppress(FileExistsError):
            os.close(os.open(database, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))


def migrate_all(settings: Settings) -> None:
    from keys.migrate import upgrade as upgrade_keys
    from vault.migrate import upgrade

    prepare_data_dir(settings)
    upgrade(settings.database_url)
    asyncio.run(upgrade_keys(settings.keystore_url))
    _upgrade_root_keys(settings)


def _upgrade_root_keys(settings: Settings) -> None:
    """The last step of ``vault migrate``; needs no Alembic."""
    from vault.runtime import open_configured_root_key, upgrade_root_keys

    async def root_key() -> None:
        # The one place a new local keyring is made: for an empty key store only (or to
        # receive an older data folder's root key, which then moves onto epochs).
        await (await open_configured_root_key(settings)).close()
        await upgrade_root_keys(settings)

    asyncio.run(root_key())


def schemas_current(settings: Settings) -> bool:
    """Are the metadata database and the key store both exactly at this code's heads?
    One read of each version table through the drivers the server loads anyway: no
    Alembic (:mod:`keys.versions`). False when either is absent, older or newer, or
    cannot be read (then the migrations run and say why)."""
    from keys import db as keys_db
    from keys.models import SCHEMA
    from keys.versions import CURRENT, keystore_status
    from vault.db.engine import Database
    from vault.db.versions import metadata_status

    async def read() -> bool:
        database = Database(settings.database_url)
        try:
            async with database.read_engine.connect() as conn:
                if await conn.run_sync(metadata_status) != CURRENT:
                    return False
        finally:
            await database.close()
        engine = keys_db.create_engine(settings.keystore_url, schema=SCHEMA)
        try:
            async with engine.connect() as conn:
                schema = None if keys_db.is_sqlite(engine) else SCHEMA
                return bool(await conn.run_sync(keystore_status, schema=schema) == CURRENT)
        finally:
            await engine.dispose()

    try:
        return asyncio.run(read())
    except Exception:  # noqa: BLE001 - unreadable is "migrate", which reports the real error
        return False


def start_migrations(settings: Settings) -> subprocess.Popen[str] | None:
    """``vault serve`` on the embedded default migrates at every start, but Alembic runs
    only when something is to be migrated (a first start, an upgrade), and then in a
    ``vault migrate`` process of its own (same environment, so the same settings):
    Alembic, Mako and the scripts (~12 MiB resident, more at their high mark) never enter
    the serving process. That process, when one is needed, is returned running (the
    server imports its own modules meanwhile): :func:`finish_migrations` waits for it."""
    prepare_data_dir(settings)
    if schemas_current(settings):
        _upgrade_root_keys(settings)
        return None
    return subprocess.Popen([sys.executable, "-m", "vault.cli", "migrate"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def finish_migrations(migrating: subprocess.Popen[str] | None) -> bool:
    """False (the child's error already shown) when the migrations failed."""
    if migrating is None:
        return True
    _, stderr = migrating.communicate()
    if migrating.returncode != 0:
        sys.stderr.write(stderr)
        print("vault: cannot start: the migrations failed (above)", file=sys.stderr)
        return False
    return True


def version() -> str:
    from importlib.metadata import PackageNotFoundError, version as installed

    try:
        return installed("clinical-photo-vault")
    except PackageNotFoundError:
        return "0+unknown"


# -- commands ---------------------------------------------------------------------------
def cmd_migrate(settings: Settings, args) -> int:
    migrate_all(settings)
    print("migrated")
    return 0


def cmd_tenant_create(settings: Settings, args) -> int:
    async def action(rt):
        tenant = await rt.tenants.create_tenant(args.slug, request_id=request_id())
        print(f"tenant {tenant.slug} created (id {tenant.id})")

    return run_with_runtime(settings, action)


def cmd_token_create(settings: Settings, args) -> int:
    from vault.tenants.service import parse_expiry

    expires = parse_expiry(args.expires) if args.expires else None

    async def action(rt):
        issued = await rt.tenants.create_token(args.tenant, args.role, label=args.label, expires_at=expires,
                                               request_id=request_id())
        until = f", expires {issued.expires_at.isoformat(timespec='seconds')}" if issued.expires_at else ""
        print(f"token id {issued.id} for tenant {issued.tenant_slug}, role {issued.role}, label {issued.label!r}{until}; "
              "shown once:")
        print(issued.token)

    return run_with_runtime(settings, action)


def cmd_token_list(settings: Settings, args) -> int:
    from vault.db import utcnow

    async def action(rt):
        now = utcnow()
        for token in await rt.tenants.tokens(args.tenant):
            used = token.last_used_at.isoformat(timespec="seconds") if token.last_used_at else "never"
            until = token.expires_at.isoformat(timespec="seconds") if token.expires_at else "never"
            print(f"{token.id}  {token.tenant_slug:<20} {token.role:<12} {token.state(now):<8} last used {used}  "
                  f"expires {until}  {token.label}")

    return run_with_runtime(settings, action)


def cmd_token_revoke(settings: Settings, args) -> int:
    async def action(rt):
        await rt.tenants.revoke_token(args.token_id, request_id=request_id())
        print(f"token {args.token_id} revoked (every node refuses it)")

    return run_with_runtime(settings, action)


def cmd_audit_verify(settings: Settings, args) -> int:

    async def action(rt):
        tenants = [await rt.tenants.tenant_by_slug(args.tenant)] if args.tenant else await rt.tenants.tenants()
        failed = 0
        checkpoints = rt.checkpoints
        for tenant in tenants:
            result = await checkpoints.verify(tenant.id)
            if result.ok:
                print(f"{tenant.slug}: intact, {result.checked} entries, {result.checkpoints} signed checkpoints")
            else:
                failed += 1
                print(f"{tenant.slug}: BROKEN at entry {result.first_bad_seq}: {result.reason}")
        return 1 if failed else 0

    return run_with_runtime(settings, action)


def cmd_worker(settings: Settings, args) -> int:
    from vault.allocator import keep_freed_memory
    from workers.runner import main as run_worker  # vault/ reaches workers/ only in this CLI

    keep_freed_memory()
    if args.concurrency < 1:
        print("vault: --concurrency must be at least 1", file=sys.stderr)
        return 2
    return run_worker(settings, concurrency=args.concurrency)


def cmd_jobs_list(settings: Settings, args) -> int:
    from vault.db import Database
    from vault.jobs.report import job_report

    require_data(settings)

    async def report() -> str:
        db = Database(settings.database_url, pool_size=1)
        try:
            return await job_report(db)
        finally:
            await db.close()

    print(asyncio.run(report()))
    return 0


def cmd_permissions(settings: Settings, args) -> int:
    from vault.permissions import markdown_document, markdown_table

    print(markdown_document() if args.markdown else markdown_table(), end="")
    return 0


def cmd_doctor(settings: Settings, args) -> int:
    """The readiness checks, for an operator: one line per check, non-zero naming what failed.
    Unlike ``/readyz``, a missing worker heartbeat fails here: someone should start one."""
    from vault.readiness import HINTS, OK

    try:
        require_data(settings)
    except ConfigError as exc:
        print(f"FAIL  data       {exc.message}")
        return 1

    async def action(rt) -> int:
        report = await rt.readiness.report(fresh=True)
        for check in report.checks:
            mark = "ok  " if check.status == OK else "FAIL"
            hint = "" if check.status == OK else f"  {HINTS.get(check.code, check.code)}"
            print(f"{mark}  {check.name:<10} {check.code}{hint}")
        journal_ok, line = cli_ops.journal_line(settings)
        print(line)
        return 0 if journal_ok and all(check.status == OK for check in report.checks) else 1

    from keys.errors import KeysError
    from vault.runtime import runtime

    async def main() -> int:
        try:
            async with runtime(settings, group_commit=False, create_root_key=False) as rt:
                return await action(rt)
        except KeysError as exc:
            print(f"FAIL  keystore   {exc}")
            return 1

    return asyncio.run(main())


def cmd_serve(settings: Settings, args) -> int:
    from vault.allocator import keep_freed_memory
    from vault.logs import configure

    if args.audit_writer:
        return _audit_writer(settings, args)
    if args.serving_slot is not None:
        return _serve_child(settings, args)
    processes = settings.http_processes if args.processes is None else args.processes
    if processes < 1:
        print("vault: --processes must be at least 1", file=sys.stderr)
        return 2
    keep_freed_memory()  # before any thread starts: uploads reuse their buffers' pages
    configure(settings.log_level)
    migrating = None if settings.production else start_migrations(settings)
    from vault.app import create_app  # while a migrating child runs, if one does
    from vault.http.server import run

    if not finish_migrations(migrating):
        return 1
    first, failure = asyncio.run(_prepare(settings, bootstrap=not settings.production))
    if failure:
        print(f"vault: cannot start: {failure}", file=sys.stderr)
        return 1
    if not settings.inprocess_jobs:
        print("no worker runs inside this node (VAULT_INPROCESS_JOBS=false): run `vault worker` beside it, "
              "or exports, erasure clean-up and key rotation wait; /readyz reports workers as degraded", flush=True)
    url = settings.public_url or f"http://{args.host}:{args.port}"
    print(f"clinical photo vault listening on {url}  (data in {settings.data_dir})", flush=True)
    if settings.root_key_url.startswith("file:"):
        # Back it up apart from the data folder, and never longer than the backup window.
        print(f"root keyring: {settings.root_key_url} (outside the data folder)", flush=True)
    if first:
        # On the terminal only, once: the log never sees a token.
        print("first start: created tenant 'demo' and a practitioner token (shown once):", flush=True)
        print(f"  curl -H 'Authorization: Bearer {first}' {url}/v1/patients", flush=True)
        print(first, flush=True)
    if processes > 1:
        from vault.http.processes import supervise

        print(f"serving from {processes} processes", flush=True)
        return supervise(settings, host=args.host, port=args.port, processes=processes)
    app = create_app(settings)
    if settings.inprocess_jobs:
        app.cleanup_ctx.append(_inprocess_worker)
    # Not web.run_app: its connections have no header-read timeout and answer parse errors in plain text.
    run(app, host=args.host, port=args.port)
    return 0


def _serve_child(settings: Settings, args) -> int:
    """One of the serving processes of ``vault serve --processes N`` (vault.http.processes):
    the parent has prepared everything; this one serves on a shared port."""
    from functools import partial

    from vault.allocator import keep_freed_memory
    from vault.app import create_app
    from vault.http.processes import child_settings, tell_parent
    from vault.http.server import run
    from vault.logs import configure
    from vault.pipeline.sandbox import die_with_parent

    die_with_parent(args.parent)
    keep_freed_memory()
    configure(settings.log_level)
    settings = child_settings(settings, slot=args.serving_slot, processes=args.processes,
                              folder=Path(args.runtime_dir))
    app = create_app(settings)
    if settings.inprocess_jobs:
        app.cleanup_ctx.append(_inprocess_worker)
    run(app, host=args.host, port=args.port, reuse_port=True, on_listening=partial(tell_parent, args.ready_fd))
    return 0


def _audit_writer(settings: Settings, args) -> int:
    """The audit writer process of ``vault serve --processes N`` (vault.audit.node): it
    commits every serving process's read audits, one group commit for the node."""
    from functools import partial

    from vault.audit.node import SOCKET_NAME, serve_writer
    from vault.http.processes import tell_parent
    from vault.logs import configure
    from vault.pipeline.sandbox import die_with_parent

    die_with_parent(args.parent)
    configure(settings.log_level)
    return serve_writer(settings.database_url, Path(args.runtime_dir) / SOCKET_NAME,
                        on_listening=partial(tell_parent, args.ready_fd))


def _processes(raw: str) -> int:
    from vault.config import _processes as read

    try:
        return read("--processes", raw)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(exc.message) from None


async def _inprocess_worker(app):
    """The embedded default runs its jobs inside ``vault serve``: no second command.
    It shares the app's runtime, so SQLite keeps one write connection per process."""
    from vault.appkeys import RUNTIME, SETTINGS
    from workers.runner import run_in_process

    stop = asyncio.Event()
    task = asyncio.create_task(
        run_in_process(app[SETTINGS], concurrency=2, stop_event=stop, runtime=app[RUNTIME]), name="in-process worker"
    )
    yield
    stop.set()
    await task


async def _prepare(settings: Settings, *, bootstrap: bool) -> tuple[str | None, str | None]:
    """Refuse to serve what would fail every request: the database, its schema and the
    key store must answer, and the configured root key must open the key store. On the
    embedded default's first start, also create the tenant ``demo`` and a token.
    Returns (first token or None, failure or None)."""
    from keys.errors import KeysError
    from vault.readiness import HINTS
    from vault.runtime import runtime

    try:
        async with runtime(settings, group_commit=False, create_root_key=False) as rt:
            report = await rt.readiness.report(fresh=True)
            for check in report.checks:
                if check.failed and check.name in ("database", "schema", "keystore"):
                    return None, f"{check.name}: {HINTS.get(check.code, check.code)}"
            if not bootstrap or await rt.tenants.tenants():
                return None, None
            await rt.tenants.create_tenant("demo", request_id=request_id())
            issued = await rt.tenants.create_token(
                "demo", "practitioner", label="first-start demo token", request_id=request_id()
            )
            return issued.token, None
    except KeysError as exc:
        return None, f"keystore: {exc}"


# -- parser -----------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vault", description="Secure clinical photo vault")
    parser.add_argument("--version", action="version", version=f"vault {version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the HTTP service")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8080)
    serve.add_argument("--processes", type=_processes, default=None,
                       help="serving processes sharing the port (default VAULT_HTTP_PROCESSES, 1; auto: one per CPU)")
    # internal: how `vault serve --processes N` starts its serving processes
    for internal, kind in (("--serving-slot", int), ("--parent", int), ("--runtime-dir", str), ("--ready-fd", int)):
        serve.add_argument(internal, type=kind, default=None, help=argparse.SUPPRESS)
    serve.add_argument("--audit-writer", action="store_true", help=argparse.SUPPRESS)
    serve.set_defaults(func=cmd_serve)

    sub.add_parser("migrate", help="upgrade the metadata database and key store to the newest schema").set_defaults(func=cmd_migrate)
    sub.add_parser(
        "doctor", help="run the readiness checks (database, schema, key store, blob store, workers); non-zero names what failed"
    ).set_defaults(func=cmd_doctor)

    tenant = sub.add_parser("tenant", help="manage tenants").add_subparsers(dest="tenant_command", required=True)
    create = tenant.add_parser("create", help="create a tenant (clinic)")
    create.add_argument("slug")
    create.set_defaults(func=cmd_tenant_create)

    token = sub.add_parser("token", help="manage API tokens").add_subparsers(dest="token_command", required=True)
    tcreate = token.add_parser("create", help="create a token; it is printed once, alone on the last line")
    tcreate.add_argument("--tenant", required=True)
    tcreate.add_argument("--role", required=True)
    tcreate.add_argument("--label", required=True, help="the system (or person) that holds it; the audit log names it")
    tcreate.add_argument("--expires", help="30d, 12h, 90m, or an ISO date/time (UTC unless it says); default: never")
    tcreate.set_defaults(func=cmd_token_create)
    tlist = token.add_parser("list", help="list tokens (never their values)")
    tlist.add_argument("--tenant")
    tlist.set_defaults(func=cmd_token_list)
    trevoke = token.add_parser("revoke", help="revoke a token by its id")
    trevoke.add_argument("token_id")
    trevoke.set_defaults(func=cmd_token_revoke)

    audit = sub.add_parser("audit", help="audit log").add_subparsers(dest="audit_command", required=True)
    verify = audit.add_parser("verify", help="verify the hash chains; non-zero exit names the first bad entry")
    verify.add_argument("--tenant")
    verify.set_defaults(func=cmd_audit_verify)
    cli_keys.add_audit_commands(audit)
    cli_keys.add_keys_commands(sub)
    cli_backup.add_commands(sub)
    cli_staff.add_staff_commands(sub)

    perms = sub.add_parser("permissions", help="print the role table as Markdown")
    perms.add_argument("--markdown", action="store_true", help="the whole of docs/permissions.md, not only the table")
    perms.set_defaults(func=cmd_permissions)

    worker = sub.add_parser("worker", help="run background jobs until SIGTERM/SIGINT")
    worker.add_argument("--concurrency", type=int, default=4, help="jobs run at the same time (default 4)")
    worker.set_defaults(func=cmd_worker)
    jobs = sub.add_parser("jobs", help="background jobs").add_subparsers(dest="jobs_command", required=True)
    jobs.add_parser("list", help="jobs per state and kind, and recent dead jobs with their last error").set_defaults(func=cmd_jobs_list)
    cli_ops.add_commands(tenant, jobs)
    return parser


def main(argv: list[str] | None = None) -> int:
    disable_core_dumps()
    args = build_parser().parse_args(argv)
    try:
        settings = Settings.from_env()
        return args.func(settings, args)
    except ConfigError as exc:
        print(f"vault: configuration error: {exc.message}", file=sys.stderr)
        return 2
    except VaultError as exc:
        print(f"vault: {exc.message}", file=sys.stderr)
        return 1
    except KeysError as exc:  # a missing or wrong root key, an unreachable KMS: one line
        print(f"vault: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
