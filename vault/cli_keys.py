"""``vault keys ...`` and ``vault audit checkpoint``: operator actions on keys, the shred
ledger, receipts and audit checkpoints. Every action on a tenant is audited in its
chain (actor ``cli``); ``verify-receipt`` needs only a public key and no database."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

from vault.cli_runtime import request_id, run_with_runtime
from vault.config import Settings


def _ops(rt):
    from vault.keyops import KeyOperations

    return KeyOperations(keys=rt.keys, audit=rt.audit, ledger=rt.ledger)


def _bar():
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("rewrapping patient keys"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=Console(stderr=True),
    )


# -- keys ---------------------------------------------------------------------------------
def cmd_keys_versions(settings: Settings, args) -> int:
    from vault.actor import Actor

    async def action(rt):
        tenant = await rt.tenants.tenant_by_slug(args.tenant)
        versions = await _ops(rt).versions(tenant.id, actor=Actor.cli(tenant.id, request_id()))
        print(f"{'version':>7}  {'state':<9} {'created':<25} {'destroyed':<25} {'DEKs':>8}")
        for v in versions:
            destroyed = v.destroyed_at.isoformat(timespec="seconds") if v.destroyed_at else "-"
            print(f"{v.version:>7}  {v.state:<9} {v.created_at.isoformat(timespec='seconds'):<25} {destroyed:<25} {v.dek_count:>8}")

    return run_with_runtime(settings, action)


async def _with_bar(rt, tenant_id: str, operation):
    """Run a rewrapping ``operation(tenant_id, actor=..., progress=...)`` under a progress bar."""
    from vault.actor import Actor

    with _bar() as bar:
        task = bar.add_task("rewrap", total=None)
        return await operation(
            tenant_id, actor=Actor.cli(tenant_id, request_id()),
            progress=lambda done, total: bar.update(task, completed=done, total=total),
        )


def cmd_keys_rotate(settings: Settings, args) -> int:
    async def action(rt):
        tenant = await rt.tenants.tenant_by_slug(args.tenant)
        version, count = await _with_bar(rt, tenant.id, _ops(rt).rotate)
        print(f"{tenant.slug}: KEK version {version} is current; {count} patient keys rewrapped")

    return run_with_runtime(settings, action)


def cmd_keys_rewrap(settings: Settings, args) -> int:
    async def action(rt):
        tenant = await rt.tenants.tenant_by_slug(args.tenant)
        count = await _with_bar(rt, tenant.id, _ops(rt).rewrap)
        print(f"{tenant.slug}: {count} patient keys rewrapped under the current KEK version")

    return run_with_runtime(settings, action)


def cmd_keys_destroy_version(settings: Settings, args) -> int:
    from vault.actor import Actor

    async def action(rt):
        tenant = await rt.tenants.tenant_by_slug(args.tenant)
        gone = await _ops(rt).destroy_version(tenant.id, args.version, actor=Actor.cli(tenant.id, request_id()),
                                              force=args.force)
        when = f"; its epoch is irrecoverable from {gone.isoformat(timespec='seconds')}" if gone else ""
        print(f"{tenant.slug}: KEK version {args.version} destroyed{when}")

    return run_with_runtime(settings, action)


def cmd_keys_reshred(settings: Settings, args) -> int:
    async def action(rt):
        repaired = await rt.ledger.reconcile()
        removed = await _ops(rt).reshred(request_id=request_id())
        slugs = {t.id: t.slug for t in await rt.tenants.tenants()}
        for tenant_id, count in sorted(removed.by_tenant.items(), key=lambda item: slugs.get(item[0], item[0])):
            print(f"{slugs.get(tenant_id, tenant_id)}: {count} key rows re-shredded")
        total = removed.total
        print(f"re-shredded {total} key rows from the shred ledger"
              + (f"; recorded {repaired} erased patients missing from it" if repaired else ""))
        if not removed.settled:
            print("a reader still holds an older snapshot of the key store: the shred.checkpoint job removes "
                  "the old page images once it ends (vault jobs list)")

    return run_with_runtime(settings, action)


def cmd_keys_verify_receipt(settings: Settings, args) -> int:
    from vault.receipts import verify_receipt

    try:
        data = json.loads(Path(args.file).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        print(f"INVALID: cannot read a receipt from {args.file}: {type(exc).__name__}")
        return 1
    if not isinstance(data, dict) or not isinstance(data.get("receipt"), dict) or not isinstance(data.get("signature"), str):
        print('INVALID: expected {"receipt": {...}, "signature": "..."}')
        return 1
    if args.public_key:
        try:
            pem = Path(args.public_key).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            print(f"vault: cannot read the public key {args.public_key}: {type(exc).__name__}", file=sys.stderr)
            return 2
    else:
        pem = asyncio.run(_service_public_key(settings))
    try:
        valid = verify_receipt(data["receipt"], data["signature"], pem)
    except ValueError as exc:
        print(f"vault: {exc}", file=sys.stderr)
        return 2
    receipt = data["receipt"]
    if not valid:
        print("INVALID: the signature does not match this receipt and key")
        return 1
    promise = (f"irrecoverable everywhere after {receipt.get('irrecoverable_after')}" if receipt.get("irrecoverable_after")
               else f"no date promised: {receipt.get('no_date_reason')}")
    print(f"valid erasure receipt {receipt.get('receipt_id')}: {len(receipt.get('destroyed_key_ids', []))} keys destroyed "
          f"at {receipt.get('completed_at')}; {promise}")
    if args.online:
        return _check_finality(settings, receipt, pem)
    return 0


def _check_finality(settings: Settings, receipt: dict, pem: str) -> int:
    """Ask this vault for the receipt's finality attestation and check its signature:
    exit 0 when final, 3 when the epochs are not all destroyed yet, 1 when invalid."""
    from vault.actor import Actor
    from vault.receipts import verify_finality

    async def action(rt):
        actor = Actor.cli(receipt.get("tenant_id", ""), request_id())
        return await rt.lifecycle.erasure.finality(actor, str(receipt.get("receipt_id")))

    outcome: dict = {}

    async def capture(rt):
        outcome.update(await action(rt))

    status = run_with_runtime(settings, capture)
    if status != 0 or not outcome:
        return status or 1
    attestation = outcome["finality"]
    if not verify_finality(attestation, outcome["signature"], pem):
        print("INVALID: the finality attestation is not signed by this key")
        return 1
    if attestation["final"]:
        print(f"final: every epoch that wrapped the patient's keys is destroyed; irrecoverable since {attestation['final_at']}")
        return 0
    pending = [e["root_version"] for e in attestation["epochs"] if not e["irrecoverable_at"]]
    print(f"not final yet (as of {attestation['checked_at']}): {len(pending)} epoch(s) still live or pending deletion")
    return 3


async def _service_public_key(settings: Settings) -> str:
    from keys.providers import open_root_key
    from keys.store import KeyStore

    root = open_root_key(settings.root_key_url, production=settings.production, create=False)
    try:
        keys = await KeyStore.open(settings.keystore_url, root)
        try:
            return await keys.public_key_pem()
        finally:
            await keys.close()
    finally:
        await root.close()


# -- audit --------------------------------------------------------------------------------
def cmd_audit_checkpoint(settings: Settings, args) -> int:
    from vault.audit.checkpoints import checkpoint_document

    async def action(rt):
        tenants = [await rt.tenants.tenant_by_slug(args.tenant)] if args.tenant else await rt.tenants.tenants()
        checkpoints = rt.checkpoints
        for tenant in tenants:
            cp = await checkpoints.checkpoint(tenant.id)
            if cp is None:
                print(f"{tenant.slug}: empty chain, nothing to sign")
            elif args.json:
                print(json.dumps({"checkpoint": checkpoint_document(cp), "signature": cp.signature}, sort_keys=True))
            else:
                print(f"{tenant.slug}: checkpoint at entry {cp.seq}, head {cp.hash[:16]}…, signed {cp.signed_at.isoformat()}")

    return run_with_runtime(settings, action)


def add_audit_commands(audit: argparse._SubParsersAction) -> None:
    checkpoint = audit.add_parser("checkpoint", help="sign each tenant's audit-chain head with the service key")
    checkpoint.add_argument("--tenant", help="only this tenant (slug)")
    checkpoint.add_argument("--json", action="store_true", help="print the signed checkpoints as JSON lines, to keep elsewhere")
    checkpoint.set_defaults(func=cmd_audit_checkpoint)


def add_keys_commands(sub: argparse._SubParsersAction) -> None:
    keys = sub.add_parser("keys", help="tenant KEKs, the shred ledger, erasure receipts").add_subparsers(
        dest="keys_command", required=True
    )
    versions = keys.add_parser("versions", help="a tenant's KEK versions, their state and how many DEKs each wraps")
    versions.add_argument("--tenant", required=True)
    versions.set_defaults(func=cmd_keys_versions)
    rotate = keys.add_parser("rotate", help="new KEK version; rewrap every patient key under it (reads keep working)")
    rotate.add_argument("--tenant", required=True)
    rotate.set_defaults(func=cmd_keys_rotate)
    rewrap = keys.add_parser("rewrap", help="finish an interrupted rotation: rewrap keys still under old versions")
    rewrap.add_argument("--tenant", required=True)
    rewrap.set_defaults(func=cmd_keys_rewrap)
    destroy = keys.add_parser("destroy-kek-version", help="shred an old KEK version (refused while any DEK uses it)")
    destroy.add_argument("--tenant", required=True)
    destroy.add_argument("--version", type=int, required=True)
    destroy.add_argument("--force", action="store_true",
                         help="destroy even inside the backup window (backups of that epoch become unrestorable)")
    destroy.set_defaults(func=cmd_keys_destroy_version)
    reshred = keys.add_parser("reshred", help="after restoring a key-store backup: destroy again every key in the shred ledger")
    reshred.set_defaults(func=cmd_keys_reshred)
    verify = keys.add_parser("verify-receipt", help="check an erasure receipt's signature; exit 0 valid, 1 invalid")
    verify.add_argument("file", help='JSON {"receipt": {...}, "signature": "..."} as an erasure returned it')
    verify.add_argument("--public-key", metavar="PEMFILE",
                        help="the published public key (GET /v1/erasure-receipts/public-key); default: the key store's")
    verify.add_argument("--online", action="store_true",
                        help="also fetch and check this vault's signed finality attestation (exit 3: not final yet)")
    verify.set_defaults(func=cmd_keys_verify_receipt)
