"""``vault staff create | list | reset | disable`` as an operator runs them (subprocesses on
an embedded vault): the link alone on the last line, the states, a reset's new link."""

from __future__ import annotations

import re

from tests.test_cli import _env, vault

LINK = re.compile(r"^http://127\.0\.0\.1:8080/enrol/[A-Za-z0-9_-]{40,}$")


def test_staff_commands(tmp_path):
    env = _env(tmp_path)
    vault("migrate", env=env)
    vault("tenant", "create", "north", env=env)
    created = vault("staff", "create", "--tenant", "north", "--email", "DPO@North.example", "--role", "dpo", env=env)
    first_link = created.stdout.strip().splitlines()[-1]
    assert LINK.match(first_link), created.stdout
    staff_id = re.search(r"^staff ([0-9a-f]{32}) ", created.stdout, re.M).group(1)  # type: ignore[union-attr]
    reset = vault("staff", "reset", staff_id, env=env)
    assert LINK.match(reset.stdout.strip().splitlines()[-1]) and first_link not in reset.stdout
    vault("staff", "disable", staff_id, env=env)
    listed = vault("staff", "list", "--tenant", "north", env=env).stdout
    assert re.search(rf"^{staff_id}\s+dpo\s+disabled\s+dpo@north\.example$", listed, re.M), listed
    assert first_link.rsplit("/", 1)[1] not in listed
