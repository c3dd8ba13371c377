"""Schemathesis against the served ``/v1/openapi.json`` (issue 11, item 9): every
operation, generated inputs (valid and invalid), each sent with a token of every role.
Bounded in cases (``FUZZ_EXAMPLES`` per operation) and in time (a request timeout):
0 server errors, 0 hung requests. And (issue 19) schemathesis's own runner with every
check it has, once per role: the document and the server agree (docs/api.md).

The server runs in its own thread and event loop on the runner ``vault serve`` uses,
because schemathesis calls it synchronously (requests)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode

from vault.permissions import ROLES

FUZZ_EXAMPLES = 6  # per operation; each example is sent once per role
REQUEST_TIMEOUT = 20  # seconds: only a hung request reaches it
SCHEMATHESIS_EXAMPLES = 5  # per operation and phase, for each role


def test_no_server_errors_for_any_role(live):
    # Not schemathesis's pytest plugin (its lazy fixture loader fails on pytest 9): the
    # same per-operation Hypothesis strategies, driven here.
    schema = schemathesis.openapi.from_url(f"{live.url}/v1/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) > 30
    for operation in operations:
        cases = st.one_of(operation.as_strategy(GenerationMode.POSITIVE), operation.as_strategy(GenerationMode.NEGATIVE))

        @given(case=cases)
        @settings(max_examples=FUZZ_EXAMPLES, deadline=None, database=None, phases=[Phase.explicit, Phase.generate],
                  suppress_health_check=list(HealthCheck))
        def no_server_error(case) -> None:
            for role, token in live.tokens.items():
                response = case.call(base_url=live.url, headers={"Authorization": f"Bearer {token}"}, timeout=REQUEST_TIMEOUT)
                where = f"{case.method} {case.path} as {role}"
                assert response.status_code < 500, f"{where}: {response.status_code} {response.text[:300]}"
                if response.status_code >= 400:  # FHIR errors are OperationOutcome (docs/fhir.md)
                    assert response.headers["content-type"][0].startswith(
                        ("application/fhir+json",) if case.path.startswith("/fhir/") else
                        ("application/json",) if case.path == "/readyz" else ("application/problem+json",)), where

        no_server_error()
    assert live.run(_healthz(live.url)) == 200


async def _healthz(url: str) -> int:
    from aiohttp import ClientSession

    async with ClientSession() as session, session.get(f"{url}/healthz") as resp:
        return resp.status


@pytest.mark.parametrize("role", sorted(str(role) for role in ROLES))
def test_every_check_passes_for_every_role(live, role, tmp_path):
    """Schemathesis's own runner (its CLI, as a records-system developer would run it)
    with every check it has: status codes, content types, response headers and schemas
    conform; invalid data is refused and valid data accepted; missing headers, undeclared
    methods and requests without the token are refused; examples, coverage, fuzzing and
    stateful phases. tests/http/schemathesis.toml names what JSON Schema cannot say."""
    done = subprocess.run(
        [str(Path(sys.executable).parent / "schemathesis"), "--config-file", str(Path(__file__).with_name("schemathesis.toml")),
         "run", f"{live.url}/v1/openapi.json", "--checks", "all", "--continue-on-failure",
         "--max-examples", str(SCHEMATHESIS_EXAMPLES), "--request-timeout", str(REQUEST_TIMEOUT), "--seed", "19",
         "-H", f"Authorization: Bearer {live.tokens[role]}", "--no-color"],
        capture_output=True, text=True, timeout=1800, check=False, cwd=tmp_path,
    )
    (tmp_path / "schemathesis.txt").write_text(done.stdout + done.stderr)
    assert done.returncode == 0, done.stdout[-20000:] + done.stderr[-3000:]
