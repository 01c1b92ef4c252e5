"""A SKU feed's tick against fake transports: one encoding per update, the same bytes object
written to every listener in its framing, heartbeats after silence, and listeners whose client
has gone or reads too slowly ended and forgotten within the tick."""

from __future__ import annotations

import msgspec

from ingest.events.sku_feeds import SKU_STREAM_BACKLOG_MAX_BYTES, Listener, SkuFeed
from ingest.events.sse import HEARTBEAT_FRAMES, Frames
from ingest.results import ResultsHub
from proto.messages import SkuState

STATE = SkuState(sku="tee", stock=10, reserved=0, sold=0, price_cents=100, max_per_user=None,
                 payment="none", reservation_ttl_s=600, sale_start_ms=None, sale_end_ms=None)
HEARTBEAT_S = 15.0


class FakeTransport:
    def __init__(self, backlog: int = 0) -> None:
        self.written: list[bytes] = []
        self.backlog = backlog
        self.closing = False

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def is_closing(self) -> bool:
        return self.closing

    def get_write_buffer_size(self) -> int:
        return self.backlog


def feed_with(*transports: tuple[FakeTransport, bool]) -> tuple[SkuFeed, ResultsHub, list[Listener]]:
    hub = ResultsHub(cache_max=10, waiters_max=10)
    hub.put_sku(STATE)
    feed = SkuFeed(hub, STATE, interval_s=3600, heartbeat_s=HEARTBEAT_S)
    feed.stop()  # ticks are driven by the test
    listeners = [Listener(t, chunked) for t, chunked in transports]  # type: ignore[arg-type]
    for listener in listeners:
        feed.join(listener, feed.event)
    return feed, hub, listeners


def test_frames_are_one_chunk_each():
    frames = Frames.of(b"event: sku\ndata: {}\n\n")
    assert frames.chunked == b"15\r\nevent: sku\ndata: {}\n\n\r\n"


async def test_an_update_is_encoded_once_and_the_same_bytes_go_to_every_listener():
    transports = [FakeTransport() for _ in range(4)]
    feed, hub, listeners = feed_with(*((t, i % 2 == 0) for i, t in enumerate(transports)))
    feed.tick(now=1.0)
    assert all(not t.written for t in transports)  # nothing changed, no heartbeat due yet
    hub.put_sku(msgspec.structs.replace(STATE, sold=1))
    feed.tick(now=2.0)
    chunked = {id(t.written[0]) for t in transports[0::2]}
    plain = {id(t.written[0]) for t in transports[1::2]}
    assert len(chunked) == len(plain) == 1  # one bytes object per framing, not one per stream
    assert transports[1].written == [feed.event.raw] and b'"remaining":9' in feed.event.raw
    hub.put_sku(msgspec.structs.replace(STATE, sold=1))  # a new state, the same view
    feed.tick(now=3.0)
    assert all(len(t.written) == 1 for t in transports)
    assert not any(listener.ended.done() for listener in listeners)


async def test_a_joining_listener_gets_what_changed_since_its_request_wrote():
    feed, hub, _ = feed_with()
    sent = feed.event
    hub.put_sku(msgspec.structs.replace(STATE, sold=2))
    feed.tick(now=1.0)
    late = FakeTransport()
    feed.join(Listener(late, False), sent)  # type: ignore[arg-type]
    assert late.written == [feed.event.raw]


async def test_silence_sends_heartbeats():
    transport = FakeTransport()
    feed, _, _ = feed_with((transport, True))
    loop_start = feed._quiet_until - HEARTBEAT_S
    feed.tick(now=loop_start + HEARTBEAT_S - 1)
    assert transport.written == []
    feed.tick(now=loop_start + HEARTBEAT_S)
    assert transport.written == [HEARTBEAT_FRAMES.chunked]


async def test_gone_and_slow_listeners_are_ended_and_forgotten():
    gone, slow, fine = FakeTransport(), FakeTransport(SKU_STREAM_BACKLOG_MAX_BYTES + 1), FakeTransport()
    feed, hub, (l_gone, l_slow, l_fine) = feed_with((gone, True), (slow, True), (fine, True))
    gone.closing = True
    feed.tick(now=1.0)  # no update: only the gone one is noticed
    assert l_gone.ended.result() == "gone" and not l_slow.ended.done()
    hub.put_sku(msgspec.structs.replace(STATE, sold=3))
    feed.tick(now=2.0)
    assert l_slow.ended.result() == "slow" and slow.written == []
    assert len(fine.written) == 1 and not l_fine.ended.done()
    assert feed.listeners == {l_fine}
