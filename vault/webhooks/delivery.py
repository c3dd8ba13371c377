"""Sending one signed webhook without becoming a way into anyone's network.

- https only; plain http only to a loopback address, and only when
  ``VAULT_WEBHOOKS_ALLOW_HTTP_LOOPBACK`` is on (tests).
- The host is resolved once; every address it resolves to must be public (not private,
  loopback, link-local, multicast, reserved, unspecified, nor such an address embedded
  in IPv6), or the destination is refused. Checked when an admin configures the URL and
  again before every delivery, since DNS answers change.
- The connection goes to the address that was checked: aiohttp gets a resolver that
  knows only that address, so a second lookup (DNS rebinding) cannot redirect it, while
  the URL — hence the Host header, SNI and certificate check — keeps the name.
- An operator allow-list (``VAULT_WEBHOOKS_ALLOW_NETWORKS``) lets on-premises receivers
  through: an address inside a listed network passes whatever its kind (loopback,
  link-local or a metadata address only when a listed network covers it); a listed host
  name may resolve to private addresses (RFC 1918, unique-local, never loopback,
  link-local, reserved or an address embedded in IPv6). Multicast and unspecified
  addresses never pass. The check stays per address, at configuration and at delivery,
  and the connection stays pinned to the checked address.
- No redirects are followed (a 3xx is a failed delivery), no proxy from the
  environment, short timeouts, and the response body is never read.

Signature: ``X-Vault-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>``.
Receivers recompute it and reject timestamps older than a few minutes, so a captured
delivery cannot be replayed later (see docs/consent.md for a receiver's recipe).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import socket
import ssl
from collections.abc import Iterable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult

MAX_URL = 2048
RESOLVE_TIMEOUT = 5.0
TIMEOUT = aiohttp.ClientTimeout(total=10, connect=5, sock_connect=5, sock_read=5)
SIGNATURE_HEADER = "X-Vault-Signature"
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
IP = ipaddress.IPv4Address | ipaddress.IPv6Address


class Refused(Exception):
    """The destination may not be contacted; ``problem`` is a short code, no URL."""

    def __init__(self, problem: str) -> None:
        super().__init__(problem)
        self.problem = problem


@dataclass(frozen=True, slots=True)
class Destination:
    url: str
    host: str
    port: int
    address: str  # the checked address the connection goes to
    family: int


@dataclass(frozen=True, slots=True)
class AllowList:
    """The operator's allow-list of networks and host names (``VAULT_WEBHOOKS_ALLOW_NETWORKS``)."""

    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    hosts: frozenset[str] = field(default_factory=frozenset)

    @classmethod
    def of(cls, entries: Iterable[str]) -> AllowList:
        networks, hosts = [], set()
        for entry in entries:
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                hosts.add(entry.lower().rstrip("."))
        return cls(networks=tuple(networks), hosts=frozenset(hosts))

    def passes(self, ip: IP, host: str) -> bool:
        """Whether an address refused by the default rules is let through by the list."""
        if ip.is_multicast or ip.is_unspecified:
            return False
        if any(ip.version == n.version and ip in n for n in self.networks):
            return True
        if host.lower().rstrip(".") in self.hosts:
            # a private address proper: not loopback, link-local, reserved nor embedded
            return address_problem(ip, allow_loopback=False) == "private_address" and ip.is_private and not (
                isinstance(ip, ipaddress.IPv6Address) and (ip.ipv4_mapped or ip.sixtofour or ip.teredo or ip in _NAT64))
        return False


NOTHING_ALLOWED = AllowList()


def address_problem(ip: IP, *, allow_loopback: bool) -> str | None:
    """Why this address may not be contacted, or None."""
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped or ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
        if embedded is None and ip in _NAT64:
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is not None:
            problem = address_problem(embedded, allow_loopback=False)
            if problem is not None:
                return problem
    if ip.is_loopback:
        return None if allow_loopback else "loopback_address"
    if ip.is_link_local:
        return "link_local_address"
    if ip.is_multicast:
        return "multicast_address"
    if ip.is_private:
        return "private_address"
    if ip.is_reserved or ip.is_unspecified or not ip.is_global:
        return "reserved_address"
    return None


def parse(url: str, *, allow_http_loopback: bool) -> tuple[str, str, int]:
    """(scheme, host, port) of a syntactically acceptable webhook URL."""
    if len(url) > MAX_URL or any(c.isspace() or ord(c) < 0x21 or ord(c) > 0x7E for c in url):
        raise Refused("invalid_url")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise Refused("invalid_url") from None
    scheme = parts.scheme.lower()
    if scheme not in ("https", "http") or (scheme == "http" and not allow_http_loopback):
        raise Refused("https_required")
    if parts.username is not None or parts.password is not None:
        raise Refused("credentials_in_url")
    if parts.fragment or not parts.hostname:
        raise Refused("invalid_url")
    return scheme, parts.hostname, port or (443 if scheme == "https" else 80)


async def resolve(url: str, *, allow_http_loopback: bool, allow: AllowList = NOTHING_ALLOWED) -> Destination:
    """Check the URL and every address its host resolves to; pick the one to connect to."""
    scheme, host, port = parse(url, allow_http_loopback=allow_http_loopback)
    try:
        literal: IP | None = ipaddress.ip_address(host)
    except ValueError:
        literal = None
    if literal is not None:
        found = [(literal, socket.AF_INET6 if literal.version == 6 else socket.AF_INET)]
    else:
        try:
            async with asyncio.timeout(RESOLVE_TIMEOUT):
                infos = await asyncio.get_running_loop().getaddrinfo(
                    host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
                )
        except (OSError, TimeoutError, UnicodeError):
            raise Refused("unresolvable") from None
        # sockaddr[0] is the address string for AF_INET/AF_INET6 (typeshed also allows an int).
        found = [(ipaddress.ip_address(str(info[4][0]).split("%")[0]), info[0]) for info in infos]
        if not found:
            raise Refused("unresolvable")
    # Every answer must pass: a name answering both a public and a private address is refused.
    for ip, _ in found:
        problem = address_problem(ip, allow_loopback=allow_http_loopback)
        if problem is not None and not allow.passes(ip, host):
            raise Refused(problem)
        if scheme == "http" and not ip.is_loopback:
            raise Refused("https_required")
    ip, family = found[0]
    return Destination(url=url, host=host, port=port, address=str(ip), family=family)


class PinnedResolver(AbstractResolver):
    """Answers every lookup with the one address that was checked."""

    def __init__(self, destination: Destination) -> None:
        self._destination = destination

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        d = self._destination
        return [ResolveResult(hostname=host, host=d.address, port=port or d.port, family=d.family, proto=0,
                              flags=socket.AI_NUMERICHOST)]

    async def close(self) -> None:
        return None


def signature(secret: str, timestamp: int, body: bytes) -> str:
    mac = hmac.new(secret.encode(), str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def tls_context(ca_file: str | None) -> ssl.SSLContext:
    """The system's trusted CAs, plus the operator's own (``VAULT_WEBHOOKS_CA_FILE``)."""
    context = ssl.create_default_context()
    if ca_file is not None:
        context.load_verify_locations(cafile=ca_file)
    return context


def pinned_session(destination: Destination, *, timeout: aiohttp.ClientTimeout = TIMEOUT) -> aiohttp.ClientSession:
    """A client session whose every connection goes to the checked address; no proxy
    from the environment. Also used by the DICOMweb sender (vault/dicom/stow.py)."""
    connector = aiohttp.TCPConnector(resolver=PinnedResolver(destination), use_dns_cache=False, force_close=True, limit=1)
    return aiohttp.ClientSession(connector=connector, timeout=timeout, trust_env=False, auto_decompress=False)


async def post(destination: Destination, body: bytes, headers: dict[str, str], *, tls: ssl.SSLContext | None = None) -> int:
    """POST once to the checked address; the HTTP status (a 3xx is returned, not followed)."""
    async with pinned_session(destination) as session:
        async with session.post(destination.url, data=body, headers=headers, allow_redirects=False,
                                ssl=tls if tls is not None else True) as response:
            return response.status
