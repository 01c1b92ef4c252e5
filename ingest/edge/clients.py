"""Who the client of a request is: the peer, or the X-Forwarded-For hop a trusted proxy
wrote."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from aiohttp import web

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def _address(text: str) -> Address | None:
    try:
        addr = ipaddress.ip_address(text.strip())
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


class Trusted:
    """The proxies whose X-Forwarded-For is believed: `trusted_proxies`, comma-separated IPs
    and CIDRs."""

    def __init__(self, networks: Iterable[Network]) -> None:
        self.networks = tuple(networks)

    @classmethod
    def parse(cls, spec: str) -> Trusted:
        entries = [e.strip() for e in spec.split(",") if e.strip()]
        try:
            return cls(ipaddress.ip_network(e, strict=False) for e in entries)
        except ValueError as exc:
            raise ValueError(f"trusted_proxies: {exc}") from None

    def has(self, address: str | Address) -> bool:
        if not self.networks:
            return False
        addr = _address(address) if isinstance(address, str) else address
        return addr is not None and any(addr in net for net in self.networks)


def client_ip(peer: str, forwarded_for: Iterable[str], trusted: Trusted) -> str:
    """The client of a request: the peer, unless the peer is a trusted proxy; then the rightmost
    X-Forwarded-For address that is not a trusted proxy (the leftmost one if all are). Entries
    left of that one were written by the client itself and prove nothing."""
    if not trusted.has(peer):
        return peer
    hops = [hop.strip() for header in forwarded_for for hop in header.split(",")]
    client = peer
    for hop in reversed(hops):
        addr = _address(hop)
        if addr is None:  # garbage a trusted proxy would not write: stop at the last good hop
            break
        client = str(addr)
        if not trusted.has(addr):
            break
    return client


CLIENT = web.RequestKey("edge_client", str)


def client_of(request: web.Request) -> str:
    """The client address `middleware` found for this request."""
    return request[CLIENT]
