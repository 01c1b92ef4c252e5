"""Group commit of intents against a real JetStream: many intents per atomic batch, each still on
its own subject; a retry inside a batch gets its own 'already stored' answer."""

from __future__ import annotations

import asyncio

import nats

from flashsale.jetstream import ensure_streams
from ingest.batcher import IntentBatcher
from ingest.publisher import Publisher


async def test_concurrent_intents_share_batches_and_keep_their_answers(settings):
    nc = await nats.connect(settings.nats_url)
    try:
        js = nc.jetstream()
        await ensure_streams(js, settings)
        names = settings.names
        publisher = await Publisher.start(nc, inflight_max=10_000)
        batcher = IntentBatcher(publisher, shards=2, batch_max=200, linger_ms=0,
                                batches_inflight_max=1, inflight_max=10_000)
        subjects = [names.intent(0, "purchase", f"p_{i:030x}") for i in range(1000)]
        stored = await asyncio.gather(*(batcher.store(0, s, b"intent", s) for s in subjects))
        assert stored == list(range(1, 1001))  # each at its own place in the shard's stream
        assert batcher.intents == 1000 and batcher.batches < 100  # most went in shared batches

        # A retry among new intents: the batch is refused as a whole, then each is stored alone.
        fresh = [names.intent(0, "purchase", f"p_{i + 5000:030x}") for i in range(50)]
        mixed = [*fresh[:25], subjects[3], *fresh[25:]]
        answers = await asyncio.gather(*(batcher.store(0, s, b"intent", s) for s in mixed))
        assert answers[25] == 0  # already stored
        assert sorted(answers[:25] + answers[26:]) == list(range(1001, 1051))
        # Shards are separate streams with sequences of their own.
        other = names.intent(1, "purchase", f"p_{1:030x}")
        assert await batcher.store(1, other, b"intent", other) == 1

        assert (await js.stream_info(names.intents_stream(0))).state.messages == 1050
        assert (await js.stream_info(names.intents_stream(1))).state.messages == 1
        for shard, s in ((0, subjects[0]), (0, subjects[-1]), (0, fresh[0]), (1, other)):
            assert (await js.get_last_msg(names.intents_stream(shard), s)).data == b"intent"
        await batcher.close()
        await publisher.stop()
    finally:
        await nc.close()
