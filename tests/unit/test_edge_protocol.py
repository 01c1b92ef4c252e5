"""The guarded protocol against fake transports: a peer over its cap of connections is reset at
accept and never reaches aiohttp, a connection that ends gives its place back, an idle one is
closed to make room at the process's cap, and a head over the limit is a counted refusal."""

from __future__ import annotations

from typing import Any

from config.settings import Settings
from ingest.edge.limits import size_limits
from ingest.edge.process import Edge
from ingest.edge.protocol import GuardedProtocol

SETTINGS = Settings(client_connections_max=2)


class Transport:
    """What the guard asks of an accepted connection."""

    def __init__(self, peer: str) -> None:
        self.peer = peer
        self.aborted = self.closed = False
        self.written = b""

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return (self.peer, 40_000) if name == "peername" else default

    def abort(self) -> None:
        self.aborted = True

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.aborted or self.closed

    def get_write_buffer_size(self) -> int:
        return 0

    def write(self, data: bytes) -> None:
        self.written += data

    def can_write_eof(self) -> bool:
        return False


class Handler:
    """aiohttp's protocol, as far as the guard hands it on."""

    def __init__(self) -> None:
        self.on_response_done: Any = None
        self.made = 0
        self.fed = b""
        self.lost = 0

    def connection_made(self, transport: Any) -> None:
        self.made += 1

    def data_received(self, data: bytes) -> None:
        self.fed += data

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost += 1


def edge(fd_limit: int = 10_000) -> Edge:
    return Edge(SETTINGS, size_limits(SETTINGS, fd_limit))


def accept(front: Edge, peer: str) -> tuple[GuardedProtocol, Transport, Handler]:
    handler = Handler()
    protocol = GuardedProtocol(lambda: handler, front)  # type: ignore[arg-type,return-value]
    transport = Transport(peer)
    protocol.connection_made(transport)  # type: ignore[arg-type]
    return protocol, transport, handler


def test_a_peer_over_its_cap_is_reset_before_aiohttp_sees_it():
    front = edge()
    for _ in range(2):
        _, transport, handler = accept(front, "10.0.0.1")
        assert handler.made == 1 and not transport.aborted
    _, transport, handler = accept(front, "10.0.0.1")
    assert transport.aborted and handler.made == 0
    _, transport, handler = accept(front, "10.0.0.2")  # another peer has its own share
    assert handler.made == 1 and not transport.aborted
    assert front.connections.open == 3


def test_a_connection_that_ends_gives_its_place_back():
    front = edge()
    protocol, _, handler = accept(front, "10.0.0.1")
    accept(front, "10.0.0.1")
    protocol.connection_lost(None)
    assert handler.lost == 1 and front.connections.open == 1
    _, transport, _ = accept(front, "10.0.0.1")
    assert not transport.aborted


def test_an_idle_connection_is_closed_to_make_room_at_the_process_cap():
    front = edge(fd_limit=300)  # room for 44 connections after the headroom
    connections_max = front.limits.connections_max
    first, first_transport, _ = accept(front, "10.0.0.1")
    for i in range(connections_max - 1):
        accept(front, f"10.1.0.{i}")
    _, transport, handler = accept(front, "10.9.9.9")
    assert handler.made == 1 and not transport.aborted
    assert first_transport.closed  # the longest idle of the busiest peers went instead
    first.connection_lost(None)
    assert front.connections.open == connections_max


async def test_a_head_over_the_limit_is_answered_by_the_guard_and_not_handed_on():
    front = edge()
    protocol, transport, handler = accept(front, "10.0.0.1")
    protocol.data_received(b"GET / HTTP/1.1\r\nX: " + b"a" * SETTINGS.head_max_bytes + b"\r\n\r\n")
    assert transport.written.startswith(b"HTTP/1.1 431 ")
    assert handler.fed == b"" and handler.lost == 1
    protocol.connection_lost(None)  # the client goes: its place is free, the linger cancelled
    assert front.connections.open == 0
