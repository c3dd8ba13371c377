"""Backup and restore (``vault backup`` / ``vault restore``) and the shred journal kept
apart from backups, so a restore can destroy again what was erased after the backup.
See docs/operations.md, "Backup and restore"."""
