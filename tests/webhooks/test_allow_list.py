"""The operator's allow-list of on-premises receivers (``VAULT_WEBHOOKS_ALLOW_NETWORKS``):
a listed private address is delivered to (over https, its certificate from the clinic's own
CA in ``VAULT_WEBHOOKS_CA_FILE``); a private address not listed is refused when configured
and again at delivery; every other SSRF rule still holds."""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import ssl

import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.webhooks.test_delivery import Receiver, deliveries, _db, settled, work
from vault.appkeys import RUNTIME
from vault.config import Settings
from vault.errors import ConfigError
from vault.webhooks.delivery import AllowList, Refused, resolve

from tests.webhooks.test_delivery import api  # noqa: F401  (fixture)

LISTED, UNLISTED = "127.0.0.5", "127.0.0.6"


def _cert(subject: str, issuer_key, issuer_name, key, *, ca: bool, ip: str | None = None) -> x509.Certificate:
    now = dt.datetime.now(dt.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
               .issuer_name(issuer_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(hours=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if ip is not None:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(ip))]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


@pytest.fixture(scope="module")
def clinic_ca(tmp_path_factory):
    """A clinic's own CA and an https server context for each test address."""
    folder = tmp_path_factory.mktemp("clinic-ca")
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Clinic CA")])
    ca = _cert("Clinic CA", ca_key, ca_name, ca_key, ca=True)
    (folder / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    contexts = {}
    for ip in (LISTED, UNLISTED):
        key = ec.generate_private_key(ec.SECP256R1())
        leaf = _cert(ip, ca_key, ca_name, key, ca=False, ip=ip)
        (folder / f"{ip}.pem").write_bytes(leaf.public_bytes(serialization.Encoding.PEM) + key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(folder / f"{ip}.pem")
        contexts[ip] = context
    return folder / "ca.pem", contexts


@pytest.fixture
def settings(settings, clinic_ca):
    # Loopback is refused by default (no test switch here): listing it is what lets it through.
    return settings.replace(webhooks_allow_http_loopback=False, webhooks_allow_networks=(f"{LISTED}/32",),
                            webhooks_ca_file=clinic_ca[0])


async def https_receiver(aiohttp_server, clinic_ca, ip: str) -> tuple[Receiver, str]:
    receiver = Receiver()
    server = await aiohttp_server(receiver.app, host=ip, ssl=clinic_ca[1][ip])
    return receiver, f"https://{ip}:{server.port}/hook"


async def test_a_listed_private_address_is_delivered_to(api, client, clinic, settings, clinic_ca, aiohttp_server):
    receiver, url = await https_receiver(aiohttp_server, clinic_ca, LISTED)
    resp = await client.put("/v1/webhooks", json={"urls": [url]}, headers=clinic.auth("admin"))
    assert resp.status == 200, await resp.text()
    photo = await api.photo(await api.patient())
    await work(settings, until=settled(clinic.id))
    assert sorted(h["X-Vault-Event"] for h, _ in receiver.seen) == ["media.created", "media.ready"]
    assert {json.loads(body)["media_id"] for _, body in receiver.seen} == {photo["id"]}
    assert {r.state for r in await deliveries(_db(client), clinic.id)} == {"delivered"}


async def test_an_unlisted_private_address_is_refused_at_configuration(client, clinic, clinic_ca, aiohttp_server):
    receiver, url = await https_receiver(aiohttp_server, clinic_ca, UNLISTED)
    resp = await client.put("/v1/webhooks", json={"urls": [url, "https://10.1.2.3/hook"]}, headers=clinic.auth("admin"))
    assert resp.status == 422
    assert (await resp.json())["details"]["errors"] == [{"field": "urls.0", "problem": "loopback_address"},
                                                        {"field": "urls.1", "problem": "private_address"}]
    assert (await (await client.get("/v1/webhooks", headers=clinic.auth("admin"))).json())["endpoints"] == []
    assert receiver.seen == []


async def test_an_address_no_longer_listed_is_refused_at_delivery(api, client, clinic, settings, clinic_ca, aiohttp_server):
    receiver, url = await https_receiver(aiohttp_server, clinic_ca, UNLISTED)
    # Configured while the API node listed it; the workers' list (the settings) no longer does.
    client.server.app[RUNTIME].webhooks.allow = AllowList.of([f"{LISTED}/32", f"{UNLISTED}/32"])
    assert (await client.put("/v1/webhooks", json={"urls": [url]}, headers=clinic.auth("admin"))).status == 200
    await api.photo(await api.patient())
    await work(settings, until=settled(clinic.id), max_attempts=1)
    rows = await deliveries(_db(client), clinic.id)
    assert {(r.state, r.last_error, r.last_status) for r in rows} == {("failed", "loopback_address", None)}
    assert receiver.seen == []


@pytest.mark.parametrize(("url", "entries", "problem"), [
    ("https://10.1.2.3/hook", [], "private_address"),
    ("https://10.1.2.3/hook", ["10.0.0.0/8"], None),
    ("https://10.1.2.3/hook", ["10.9.0.0/16"], "private_address"),
    ("https://[fd00::5]/hook", ["fd00::/8"], None),
    ("https://169.254.169.254/latest", ["10.0.0.0/8"], "link_local_address"),
    ("https://169.254.169.254/latest", ["169.254.169.254/32"], None),  # listed explicitly: the operator's call
    ("https://127.0.0.1/hook", ["10.0.0.0/8", "localhost"], "loopback_address"),
    ("https://localhost/hook", ["localhost"], "loopback_address"),  # a listed name opens private addresses only
    ("https://[::ffff:10.1.2.3]/hook", ["records.clinic.internal"], "private_address"),
    ("https://224.0.0.1/hook", ["224.0.0.0/4"], "multicast_address"),
    ("https://0.0.0.0/hook", ["0.0.0.0/8"], "private_address"),  # unspecified: never let through
    ("http://10.1.2.3/hook", ["10.0.0.0/8"], "https_required"),
])
async def test_the_allow_list_opens_only_what_it_lists(url, entries, problem):
    allow = AllowList.of(entries)
    if problem is None:
        await resolve(url, allow_http_loopback=False, allow=allow)
    else:
        with pytest.raises(Refused) as refused:
            await resolve(url, allow_http_loopback=False, allow=allow)
        assert refused.value.problem == problem


async def test_a_listed_host_name_may_resolve_to_private_addresses():
    allow = AllowList.of(["records.clinic.internal"])
    assert allow.passes(ipaddress.ip_address("10.1.2.3"), "Records.Clinic.Internal.")
    assert allow.passes(ipaddress.ip_address("fd12::1"), "records.clinic.internal")
    assert not allow.passes(ipaddress.ip_address("10.1.2.3"), "other.clinic.internal")
    assert not allow.passes(ipaddress.ip_address("169.254.169.254"), "records.clinic.internal")
    assert not allow.passes(ipaddress.ip_address("127.0.0.1"), "records.clinic.internal")


def test_the_setting_is_parsed_and_checked(tmp_path):
    env = {"VAULT_DATA_DIR": str(tmp_path)}
    s = Settings.from_env({**env, "VAULT_WEBHOOKS_ALLOW_NETWORKS": " 10.20.0.0/16, Records.Clinic.Internal ,fd00::/8,192.168.1.7"})
    assert s.webhooks_allow_networks == ("10.20.0.0/16", "records.clinic.internal", "fd00::/8", "192.168.1.7/32")
    assert Settings.from_env(env).webhooks_allow_networks == ()
    for bad in ("0.0.0.0/0", "not a host", "10.0.0.0/33", "::/0"):
        with pytest.raises(ConfigError):
            Settings.from_env({**env, "VAULT_WEBHOOKS_ALLOW_NETWORKS": bad})
