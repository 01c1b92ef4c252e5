"""The guarded protocol against fake transports: a peer over its cap of connections is reset at
accept and never reaches aiohttp, a connection that ends gives its place back, an idle one is
closed to make room at the process's cap, and a head over the limit is a counted refusal. A lone
whole request may be taken beside aiohttp (the lean path): what the client sends meanwhile is
held and handed on after its answer, in order; a client that goes away cancels it."""

from __future__ import annotations

import asyncio
from typing import Any

from config.settings import Settings
from ingest.edge.limits import size_limits
from ingest.edge.process import Edge
from ingest.edge.protocol import UNREAD_ANSWERS_MAX_BYTES, GuardedProtocol

SETTINGS = Settings(client_connections_max=2)


class Transport:
    """What the guard asks of an accepted connection."""

    def __init__(self, peer: str) -> None:
        self.peer = peer
        self.aborted = self.closed = self.paused = False
        self.written = b""
        self.buffered = 0  # written, not yet sent

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return (self.peer, 40_000) if name == "peername" else default

    def abort(self) -> None:
        self.aborted = True

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.aborted or self.closed

    def get_write_buffer_size(self) -> int:
        return self.buffered

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
        self.busy = False  # aiohttp has a request of its own in hand
        self.elsewhere = self.answered_elsewhere_count = 0

    def idle(self) -> bool:
        return not self.busy

    def answering_elsewhere(self) -> None:
        self.elsewhere += 1

    def answered_elsewhere(self) -> None:
        self.answered_elsewhere_count += 1

    def connection_made(self, transport: Any) -> None:
        self.made += 1

    def data_received(self, data: bytes) -> None:
        self.fed += data

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost += 1


def edge(fd_limit: int = 10_000) -> Edge:
    return Edge(SETTINGS, size_limits(SETTINGS, fd_limit))


def accept(front: Edge, peer: str, take: Any = None) -> tuple[GuardedProtocol, Transport, Handler]:
    handler = Handler()
    protocol = GuardedProtocol(lambda: handler, front, take)  # type: ignore[arg-type,return-value]
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


REQUEST = b"POST /v1/purchases HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}"
NEXT = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
ANSWER = b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n"


class Taker:
    """A lean path that takes every purchase offered (or none), answered when the test says."""

    def __init__(self, takes: bool = True) -> None:
        self.takes = takes
        self.offered: list[bytes] = []
        self.done: Any = None
        self.task: asyncio.Future[None] | None = None

    def __call__(self, data: bytes, peer: str, done: Any) -> asyncio.Future[None] | None:
        self.offered.append(data)
        if not self.takes or not data.startswith(b"POST /v1/purchases "):
            return None
        self.done = done
        self.task = asyncio.get_running_loop().create_future()
        return self.task


async def test_a_lone_request_is_taken_and_what_follows_waits_for_its_answer():
    front, taker = edge(), Taker()
    protocol, transport, handler = accept(front, "10.0.0.1", taker)
    protocol.data_received(REQUEST)
    assert taker.offered == [REQUEST] and handler.fed == b"" and handler.elsewhere == 1
    assert protocol.in_flight == 1
    protocol.data_received(NEXT)  # pipelined behind it
    assert handler.fed == b""
    taker.done(ANSWER, False)
    assert transport.written == ANSWER and handler.answered_elsewhere_count == 1
    assert handler.fed == NEXT and taker.offered == [REQUEST, NEXT]  # offered, not plain: handed on
    assert protocol.in_flight == 1  # the GET's


async def test_a_request_not_taken_goes_to_aiohttp():
    protocol, _, handler = accept(edge(), "10.0.0.1", Taker(takes=False))
    protocol.data_received(REQUEST)
    assert handler.fed == REQUEST and handler.elsewhere == 0


async def test_nothing_is_taken_unless_it_is_one_whole_request_with_aiohttp_idle():
    taker = Taker()
    protocol, _, handler = accept(edge(), "10.0.0.1", taker)
    protocol.data_received(REQUEST + REQUEST)  # two at once
    protocol.data_received(REQUEST[:-1])  # a part
    assert taker.offered == [] and handler.fed == REQUEST * 2 + REQUEST[:-1]
    protocol, _, handler = accept(edge(), "10.0.0.2", taker)
    handler.busy = True
    protocol.data_received(REQUEST)
    assert taker.offered == [] and handler.fed == REQUEST


async def test_an_answer_that_closes_the_connection_drops_what_was_held():
    taker = Taker()
    protocol, transport, handler = accept(edge(), "10.0.0.1", taker)
    protocol.data_received(REQUEST)
    protocol.data_received(NEXT)
    taker.done(ANSWER, True)
    assert transport.written == ANSWER and transport.closed and handler.fed == b""


async def test_a_client_that_goes_away_cancels_its_taken_request():
    taker = Taker()
    protocol, _, handler = accept(edge(), "10.0.0.1", taker)
    protocol.data_received(REQUEST)
    protocol.connection_lost(None)
    assert taker.task is not None and taker.task.cancelled() and handler.lost == 1


async def test_reading_pauses_while_more_than_a_request_is_held():
    front, taker = edge(), Taker()
    protocol, transport, _ = accept(front, "10.0.0.1", taker)
    protocol.data_received(REQUEST)
    protocol.data_received(b"x" * (front.head_max_bytes + front.body_max_bytes + 1))
    assert transport.paused
    taker.done(ANSWER, False)
    assert not transport.paused
    # Then read as any bytes are: here a head over the limit, refused by the guard.
    assert transport.written.startswith(ANSWER) and b"HTTP/1.1 431 " in transport.written


async def test_nothing_is_taken_while_the_client_leaves_answers_unread():
    taker = Taker()
    protocol, transport, handler = accept(edge(), "10.0.0.1", taker)
    transport.buffered = UNREAD_ANSWERS_MAX_BYTES + 1
    protocol.data_received(REQUEST)
    assert taker.offered == [] and handler.fed == REQUEST  # aiohttp waits for the drain
