"""Where a webhook may go: https to public addresses only, checked on every address a
name resolves to, at configuration (here) and again at delivery (test_delivery.py)."""

from __future__ import annotations

import pytest

from vault.webhooks.delivery import Refused, resolve

REFUSED = [
    ("https://10.0.0.5/hook", "private_address"),
    ("https://192.168.1.10/hook", "private_address"),
    ("https://172.16.0.1/hook", "private_address"),
    ("https://169.254.169.254/latest/meta-data", "link_local_address"),
    ("https://[fe80::1]/hook", "link_local_address"),
    ("https://127.0.0.1/hook", "loopback_address"),
    ("https://[::1]/hook", "loopback_address"),
    ("https://localhost/hook", "loopback_address"),
    ("https://224.0.0.1/hook", "multicast_address"),
    ("https://[ff02::1]/hook", "multicast_address"),
    ("https://0.0.0.0/hook", "private_address"),
    ("https://100.64.0.1/hook", "reserved_address"),
    ("https://[::ffff:10.0.0.1]/hook", "private_address"),
    ("https://[64:ff9b::a00:1]/hook", "private_address"),
    ("https://[2002:a00:1::]/hook", "private_address"),
    ("https://[fc00::1]/hook", "private_address"),
    ("http://93.184.215.14/hook", "https_required"),
    ("ftp://93.184.215.14/hook", "https_required"),
    ("https://user:secret@93.184.215.14/hook", "credentials_in_url"),
    ("https://93.184.215.14/hook#frag", "invalid_url"),
    ("https://93.184.215.14:99999/hook", "invalid_url"),
    ("https://bad host/hook", "invalid_url"),
    ("https://no-such-host.invalid/hook", "unresolvable"),
]


@pytest.mark.parametrize(("url", "problem"), REFUSED)
async def test_refused_destinations(url, problem):
    with pytest.raises(Refused) as refused:
        await resolve(url, allow_http_loopback=False)
    assert refused.value.problem == problem


async def test_a_public_address_is_accepted_and_pinned():
    destination = await resolve("https://93.184.215.14/hooks/vault", allow_http_loopback=False)
    assert (destination.address, destination.port, destination.host) == ("93.184.215.14", 443, "93.184.215.14")


@pytest.mark.parametrize(("url", "problem"), [
    ("http://127.0.0.1:8080/hook", None),
    ("http://localhost:8080/hook", None),
    ("http://10.0.0.1/hook", "private_address"),
    ("http://169.254.169.254/hook", "link_local_address"),
    ("http://93.184.215.14/hook", "https_required"),
])
async def test_the_test_setting_opens_loopback_only(url, problem):
    if problem is None:
        assert (await resolve(url, allow_http_loopback=True)).address in ("127.0.0.1", "::1")
    else:
        with pytest.raises(Refused) as refused:
            await resolve(url, allow_http_loopback=True)
        assert refused.value.problem == problem


async def test_configuration_refuses_private_destinations_over_http(client, clinic):
    resp = await client.put("/v1/webhooks", json={"urls": ["https://93.184.215.14/ok", "https://169.254.169.254/",
                                                           "http://127.0.0.1:9/"]}, headers=clinic.auth("admin"))
    assert resp.status == 422
    body = await resp.json()
    assert body["details"]["errors"] == [{"field": "urls.1", "problem": "link_local_address"},
                                         {"field": "urls.2", "problem": "https_required"}]
    config = await (await client.get("/v1/webhooks", headers=clinic.auth("admin"))).json()
    assert config["endpoints"] == []  # nothing stored

    resp = await client.put("/v1/webhooks", json={"urls": ["https://93.184.215.14/ok"]}, headers=clinic.auth("admin"))
    assert resp.status == 200
    made = await resp.json()
    assert made["secret"].startswith("whsec_") and [e["url"] for e in made["endpoints"]] == ["https://93.184.215.14/ok"]
    for role in ("dpo", "marketing", "practitioner"):
        assert (await client.get("/v1/webhooks", headers=clinic.auth(role))).status == 403
    # The secret is shown once: not on reads, not on later changes unless rotated.
    config = await (await client.get("/v1/webhooks", headers=clinic.auth("admin"))).json()
    assert "secret" not in config and made["secret"] not in str(config)
    again = await (await client.put("/v1/webhooks", json={"urls": []}, headers=clinic.auth("admin"))).json()
    assert "secret" not in again and again["endpoints"] == []
    rotated = await (await client.put("/v1/webhooks", json={"urls": [], "rotate_secret": True}, headers=clinic.auth("admin"))).json()
    assert rotated["secret"] != made["secret"]
