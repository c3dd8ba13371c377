"""The staff web session on the request path, against a bearer token in the same run.

    .venv/bin/python bench/bench_staff.py [--requests 300] [--rounds 5]

An in-process vault (embedded default in a temp folder, aiohttp's test server) answers
``GET /v1/patients/{id}`` for a bearer token (the baseline: a cached SHA-256 lookup) and for
a web session cookie (a session row joined to its account and tenant on every request, and
``last_seen_at`` written at most every 30 s); and ``POST /app/patients`` (a form with the
CSRF token, the hospital-number search) against the API's ``POST /v1/patients/search``.
Also the one-off cost of a login's argon2id verification. Medians of rounds; compare ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pyotp  # noqa: E402
from aiohttp.test_utils import TestClient, TestServer  # noqa: E402

from vault.app import create_app  # noqa: E402
from vault.appkeys import RUNTIME  # noqa: E402
from vault.config import Settings  # noqa: E402
from vault.staff import passwords  # noqa: E402

PASSWORD = "bench horse battery staple 7"


async def timed(n: int, call) -> float:
    """Median seconds of one call over ``n`` sequential calls."""
    samples = []
    for _ in range(n):
        started = time.perf_counter()
        await call()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


async def main(settings: Settings, requests: int, rounds: int) -> None:
    if True:
        client = TestClient(TestServer(create_app(settings)))
        await client.start_server()
        try:
            rt = client.server.app[RUNTIME]
            tenant = await rt.tenants.create_tenant("bench", request_id="bench")
            token = (await rt.tenants.create_token("bench", "dpo", label="bench", request_id="bench")).token
            bearer = {"Authorization": f"Bearer {token}"}
            made = await client.post("/v1/patients", json={"external_ref": "MRN-B1"}, headers=bearer)
            patient = (await made.json())["id"]
            issued = await rt.staff.create("bench", "dpo@bench.example", "dpo", request_id="bench")
            secret = (await rt.staff.enrolment(issued.token)).secret
            now = int(time.time() // 30)
            await rt.staff.enrol(issued.token, password=PASSWORD, code=pyotp.TOTP(secret).at((now - 1) * 30), request_id="b")
            pending = await rt.staff.login("bench", "dpo@bench.example", PASSWORD, request_id="bench")
            session_id = await rt.staff.second_factor(pending, pyotp.TOTP(secret).at(now * 30), request_id="bench")
            csrf = (await rt.staff.resolve(session_id)).csrf
            origin = f"http://{client.host}:{client.port}"
            cookie = {"Cookie": f"__Host-vault-session={session_id}", "Origin": origin}

            async def get(headers):
                resp = await client.get(f"/v1/patients/{patient}", headers=headers)
                assert resp.status == 200, resp.status
                await resp.read()

            async def api_search():
                resp = await client.post("/v1/patients/search", json={"external_ref": "MRN-B1"}, headers=bearer)
                assert resp.status == 200
                await resp.read()

            async def page_search():
                resp = await client.post("/app/patients", data={"csrf_token": csrf, "external_ref": "MRN-B1"},
                                         headers=cookie, allow_redirects=False)
                assert resp.status == 303, resp.status
                await resp.read()

            results: dict[str, list[float]] = {"bearer": [], "session": [], "api_search": [], "page_search": []}
            for _ in range(rounds):
                results["bearer"].append(await timed(requests, lambda: get(bearer)))
                results["session"].append(await timed(requests, lambda: get(cookie)))
                results["api_search"].append(await timed(requests // 3, api_search))
                results["page_search"].append(await timed(requests // 3, page_search))
            stored = passwords.hash_password(PASSWORD)
            argon = statistics.median(_argon(stored) for _ in range(10))
            med = {k: statistics.median(v) for k, v in results.items()}
            print(f"GET /v1/patients/{{id}}  bearer (baseline)  {med['bearer'] * 1000:7.2f} ms")
            print(f"GET /v1/patients/{{id}}  session cookie     {med['session'] * 1000:7.2f} ms  "
                  f"= {med['session'] / med['bearer']:.2f}x")
            print(f"POST /v1/patients/search bearer (baseline) {med['api_search'] * 1000:6.2f} ms")
            print(f"POST /app/patients form + CSRF, session    {med['page_search'] * 1000:6.2f} ms  "
                  f"= {med['page_search'] / med['api_search']:.2f}x")
            print(f"argon2id verify (once per login)           {argon * 1000:6.2f} ms  "
                  f"= {argon / med['bearer']:.1f}x a bearer request")
            del tenant
        finally:
            await client.close()


def _argon(stored: str) -> float:
    started = time.perf_counter()
    passwords.verify_password(stored, PASSWORD)
    return time.perf_counter() - started


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    from vault.cli import migrate_all

    with tempfile.TemporaryDirectory() as tmp:
        os.environ["XDG_DATA_HOME"] = str(Path(tmp) / "xdg")
        settings = Settings.from_env({"VAULT_DATA_DIR": str(Path(tmp) / "data"), "VAULT_INPROCESS_JOBS": "false",
                                      "VAULT_DECODER_WORKERS": "1"})
        migrate_all(settings)
        asyncio.run(main(settings, args.requests, args.rounds))
