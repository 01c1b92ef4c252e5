"""Group commit of intents against a real JetStream: the intents of many callers packed into one
message per batch, each caller told its place (the message's sequence, its index in it)."""

from __future__ import annotations

import asyncio

import nats

from flashsale.jetstream import ensure_streams
from ingest.batcher import IntentBatcher, Place
from ingest.publisher import Publisher
from proto.messages import IntentBatch, Purchase, stored_decoder


def purchase(i: int) -> Purchase:
    return Purchase(id=f"p_{i:030x}", sku="s", qty=1, user_id=f"u{i}", request_hash="h",
                    accepted_at_ms=0)


async def test_concurrent_intents_share_messages_and_learn_their_places(settings):
    nc = await nats.connect(settings.nats_url)
    try:
        js = nc.jetstream()
        await ensure_streams(js, settings)
        names = settings.names
        publisher = await Publisher.start(nc, inflight_max=10_000)
        batcher = IntentBatcher(publisher, names, shards=2, batch_max=200, linger_ms=0,
                                batches_inflight_max=1, inflight_max=10_000)
        intents = [purchase(i) for i in range(1000)]
        places = await asyncio.gather(*(batcher.store(0, p) for p in intents))
        assert batcher.intents == 1000 and batcher.batches < 100  # most went in shared batches
        # Every message holds exactly the intents told they are in it, at their indices.
        by_seq: dict[int, list[tuple[int, Purchase]]] = {}
        for place, p in zip(places, intents, strict=True):
            by_seq.setdefault(place.seq, []).append((place.index, p))
        assert sorted(by_seq) == list(range(1, batcher.batches + 1))
        for seq, held in by_seq.items():
            stored = stored_decoder.decode((await js.get_msg(names.intents_stream(0), seq)).data)
            assert isinstance(stored, IntentBatch)
            assert stored.intents == [p for _, p in sorted(held, key=lambda h: h[0])]
            assert sorted(i for i, _ in held) == list(range(len(held)))

        # Shards are separate streams with sequences of their own.
        assert await batcher.store(1, purchase(5000)) == Place(seq=1, index=0)
        # Nothing refuses a second copy of a purchase any more: the committer decides it once.
        assert await batcher.store(0, intents[3]) == Place(seq=len(by_seq) + 1, index=0)

        assert (await js.stream_info(names.intents_stream(0))).state.messages == len(by_seq) + 1
        assert (await js.stream_info(names.intents_stream(1))).state.messages == 1
        await batcher.close()
        await publisher.stop()
    finally:
        await nc.close()
