"""Run one erasure in this process and hang at a chosen point, for a kill -9 test.

    python -m tests.lifecycle.crash_erasure TENANT_ID PATIENT_ID {after_intent|after_shred}

Settings come from the VAULT_* environment like any vault process. The hang is made
by wrapping the shred ledger of this process's runtime: ``after_intent`` hangs before
the key store is touched, ``after_shred`` once the key is destroyed and recorded.
The line ``HANGING`` on stdout tells the test where the process stands.
"""

from __future__ import annotations

import asyncio
import sys

from vault.actor import Actor
from vault.config import Settings
from vault.runtime import runtime


async def main(tenant_id: str, patient_id: str, point: str) -> None:
    async with runtime(Settings.from_env()) as rt:
        shred = rt.ledger.shred_patient

        async def hang_around_shred(*args, **kwargs):
            if point == "after_shred":
                await shred(*args, **kwargs)
            print("HANGING", flush=True)
            await asyncio.sleep(600)

        rt.ledger.shred_patient = hang_around_shred
        actor = Actor(tenant_id=tenant_id, token_id="crash-test", role="erasure", request_id="crash-test")
        await rt.lifecycle.erasure.erase(actor, patient_id, reason="crash test")


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:4]))
