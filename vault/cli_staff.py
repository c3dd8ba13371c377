"""``vault staff ...``: the operator's commands for web-app logins (docs/staff.md).

``create`` and ``reset`` print a one-time enrolment link, valid 24 hours, alone on the last
line of stdout; opening it shows a form, and only completing that form consumes it. The link
starts with ``VAULT_PUBLIC_URL`` (or http://127.0.0.1:8080 when unset)."""

from __future__ import annotations

import argparse

from vault.cli_runtime import request_id, run_with_runtime
from vault.config import Settings


def _link(settings: Settings, token: str) -> str:
    return f"{(settings.public_url or 'http://127.0.0.1:8080').rstrip('/')}/enrol/{token}"


def _print_issued(settings: Settings, issued) -> None:
    print(f"staff {issued.staff.id}  {issued.staff.email}  role {issued.staff.role}  tenant {issued.staff.tenant_slug}")
    print(f"enrolment link, valid until {issued.expires_at.isoformat(timespec='minutes')} (once):")
    print(_link(settings, issued.token))


def cmd_create(settings: Settings, args) -> int:
    async def action(rt):
        _print_issued(settings, await rt.staff.create(args.tenant, args.email, args.role, request_id=request_id()))

    return run_with_runtime(settings, action)


def cmd_list(settings: Settings, args) -> int:
    async def action(rt):
        print(f"{'id':<32}  {'role':<12} {'state':<9} email")
        for s in await rt.staff.accounts(args.tenant):
            print(f"{s.id:<32}  {s.role:<12} {s.state:<9} {s.email}")

    return run_with_runtime(settings, action)


def cmd_disable(settings: Settings, args) -> int:
    async def action(rt):
        info = await rt.staff.disable(args.id, request_id=request_id())
        print(f"disabled {info.email} ({info.tenant_slug}); every session of theirs has ended")

    return run_with_runtime(settings, action)


def cmd_reset(settings: Settings, args) -> int:
    async def action(rt):
        _print_issued(settings, await rt.staff.reset(args.id, request_id=request_id()))

    return run_with_runtime(settings, action)


def add_staff_commands(sub: argparse._SubParsersAction) -> None:
    from vault.permissions import ROLES

    staff = sub.add_parser("staff", help="web-app logins of clinic staff").add_subparsers(
        dest="staff_command", required=True)
    create = staff.add_parser("create", help="a new login; prints a one-time enrolment link (24 h)")
    create.add_argument("--tenant", required=True)
    create.add_argument("--email", required=True)
    create.add_argument("--role", required=True, choices=ROLES)
    create.set_defaults(func=cmd_create)
    listing = staff.add_parser("list", help="a tenant's staff logins and their state")
    listing.add_argument("--tenant", required=True)
    listing.set_defaults(func=cmd_list)
    disable = staff.add_parser("disable", help="disable a login and end its sessions")
    disable.add_argument("id")
    disable.set_defaults(func=cmd_disable)
    reset = staff.add_parser("reset", help="forget password and second factor; prints a new enrolment link")
    reset.add_argument("id")
    reset.set_defaults(func=cmd_reset)
