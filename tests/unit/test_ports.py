"""Ports for test servers: never the same one twice in a process, even before anything binds."""

from __future__ import annotations

from flashsale.ports import free_port, free_port_block


def test_ports_handed_out_are_never_handed_out_again():
    # Nothing binds these, so each is still free when the next is chosen: only the memory of
    # what was handed out keeps two servers of one test from getting the same port.
    ports = [free_port() for _ in range(500)]
    base = free_port_block(8)
    assert len(set(ports)) == len(ports)
    assert not set(range(base, base + 8)) & set(ports)
