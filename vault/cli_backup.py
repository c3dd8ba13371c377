"""``vault backup --to DIR`` and ``vault restore --from DIR`` (vault/backup/,
docs/operations.md "Backup and restore"). Neither ever reads or copies the root keyring."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

from vault.cli_runtime import request_id, require_data
from vault.config import Settings


def cmd_backup(settings: Settings, args) -> int:
    from vault.backup.restore import describe
    from vault.backup.snapshot import take_backup
    from vault.cli import version

    require_data(settings)
    result = asyncio.run(take_backup(settings, Path(args.to).resolve(), vault_version=version()))
    print(f"{describe(result.manifest)}; written to {result.path}")
    print("the root keyring is not in it: keep that apart, and no longer than the backup window")
    return 0


def cmd_restore(settings: Settings, args) -> int:
    from vault.backup.restore import restore
    from vault.cli import migrate_all

    report = asyncio.run(restore(settings, Path(args.source).resolve(), force=args.force,
                                 accept_resurrection_risk=args.accept_resurrection_risk,
                                 request_id=request_id(), migrate=migrate_all))
    print(f"restored backup {report.backup_id}: {report.journal_entries} journal entries merged into the shred ledger; "
          f"{report.reerased} patients erased again, {report.redeleted} media deleted again, "
          f"{report.reshredded} keys re-shredded, {report.orphan_keys} keys without a row shredded, "
          f"{report.blobs_copied} blobs copied back")
    if report.holds_lifted:
        print(f"{report.holds_lifted} legal holds the backup still showed were lifted before those erasures")
    print("run `vault audit verify`, then start the nodes and workers")
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    backup = sub.add_parser("backup", help="snapshot the metadata database and key store, list (or copy) the blobs; "
                                           "never the root keyring")
    backup.add_argument("--to", required=True, metavar="DIR", help="a new, empty folder")
    backup.set_defaults(func=cmd_backup)
    restore = sub.add_parser("restore", help="restore a backup, then re-shred everything the shred journal "
                                             "recorded, before the vault serves")
    restore.add_argument("--from", dest="source", required=True, metavar="DIR")
    restore.add_argument("--force", action="store_true",
                         help="replace a vault that is not empty (stop every node and worker first)")
    restore.add_argument("--accept-resurrection-risk", action="store_true",
                         help="restore without a shred journal: patients erased after the backup may come back")
    restore.set_defaults(func=cmd_restore)
