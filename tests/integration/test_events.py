"""Server-Sent Events against a live stack: a purchase's events come in order (pending first,
then its decisions), end after a final state, resume with Last-Event-ID without loss or repeat,
carry heartbeats and end after sse_max_s; another buyer gets a 404, no token a 401; streams are
counted against waiters_max and sku_streams_max; a SKU's stream ticks its stock down."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass

import aiohttp
import msgspec

from ingest.events.sse import event_order
from launch.processes import ingest_metrics_url
from tests.auth import bearer
from tests.auth import pid as purchase_id
from tests.conftest import seed_sku
from tests.integration.test_edge_limits import session
from tests.integration.test_ingest_flow import Client

EVENT_STREAM = "text/event-stream"
READ_TIMEOUT_S = 20.0


@dataclass
class Event:
    id: str | None
    name: str | None
    data: dict


class Sse:
    """An open event stream, read as it arrives: `next()` is an Event, a comment (str) or None
    once the server ended the stream."""

    def __init__(self, resp: aiohttp.ClientResponse) -> None:
        self.resp = resp
        self.comments: list[str] = []

    async def next(self, timeout_s: float = READ_TIMEOUT_S) -> Event | str | None:
        fields: dict[str, str] = {}
        while True:
            line = (await asyncio.wait_for(self.resp.content.readline(), timeout_s)).decode()
            if not line:
                return None
            line = line.rstrip("\n")
            if line.startswith(":"):
                self.comments.append(line[1:].strip())
                return line[1:].strip()
            if line:
                name, _, value = line.partition(":")
                fields[name] = value.removeprefix(" ")
                continue
            if "data" in fields:
                return Event(fields.get("id"), fields.get("event"), json.loads(fields["data"]))
            fields = {}  # a block without data (the opening `retry:`): no event

    async def events(self, timeout_s: float = READ_TIMEOUT_S) -> list[Event]:
        """Every event until the server ends the stream (comments are kept in `comments`)."""
        out: list[Event] = []
        while (item := await self.next(timeout_s)) is not None:
            if isinstance(item, Event):
                out.append(item)
        return out

    async def next_event(self, timeout_s: float = READ_TIMEOUT_S) -> Event | None:
        while (item := await self.next(timeout_s)) is not None:
            if isinstance(item, Event):
                return item
        return None


async def open_stream(
    http: aiohttp.ClientSession, url: str, headers: dict[str, str]
) -> aiohttp.ClientResponse:
    return await http.get(url, headers={"Accept": EVENT_STREAM, **headers})


def assert_in_history_order(events: list[Event]) -> None:
    ids = [e.id for e in events]
    assert len(set(ids)) == len(ids), ids  # nothing sent twice
    orders = [event_order(i) for i in ids if i is not None]
    assert orders == sorted(orders) and None not in orders, ids


async def test_pending_first_then_decided_then_the_stream_ends_and_resumes(system, settings):
    s = msgspec.structs.replace(settings, sse_heartbeat_s=0.3)
    system.settings = s
    await seed_sku(s, "tee", stock=5, price_cents=900)
    system.start_ingest()  # no committers yet: the purchase stays pending
    async with aiohttp.ClientSession() as http:
        c = Client(http, system.base_url, s.admin_token)
        status, _, p = await c.buy("tee", "alice", "k1", wait_s=None)
        assert status == 202 and p["status"] == "pending"
        url = f"{system.base_url}/v1/purchases/{p['id']}/events"

        resp = await open_stream(http, url, bearer("alice"))
        assert resp.status == 200 and resp.headers["Content-Type"] == EVENT_STREAM
        assert resp.headers["Cache-Control"] == "no-store"
        first_stream = Sse(resp)
        first = await first_stream.next_event()
        assert first is not None and first.name == "purchase" and first.id.startswith("pending")
        assert first.data["status"] == "pending" and first.data["id"] == p["id"]
        assert first.data == {**p, **first.data}  # the same view as the POST answered

        # A client that holds the pending state already gets nothing new, only heartbeats.
        resumed = Sse(await open_stream(http, url, {**bearer("alice"), "Last-Event-ID": first.id}))
        assert await resumed.next() == "hb"

        started = time.monotonic()
        for shard in range(s.shards):
            system.start_committer(shard)
        rest = await first_stream.events()
        print(f"pending -> confirmed on the stream {time.monotonic() - started:.2f} s after the "
              "committers were started (includes their start)")
        history = [first, *rest]
        assert [e.data["status"] for e in history][-1] == "confirmed"
        assert all(e.data["status"] == "pending" for e in history[:-1])
        assert_in_history_order(history)
        final = history[-1]
        assert final.id.startswith("confirmed.") and final.data["amount_cents"] == 900
        # The resumed stream gets the decision, and nothing it had.
        assert [e.id for e in await resumed.events()] == [final.id]

        # Reconnecting with the final state: 204, nothing more will come.
        async with http.get(url, headers={**bearer("alice"), "Last-Event-ID": final.id}) as r:
            assert r.status == 204
        # With an older (or no, or a foreign) id: the final state at once, then the end.
        for held in (first.id, None, "garbage", "pending." + "9" * 56):
            headers = bearer("alice") | ({"Last-Event-ID": held} if held else {})
            again = Sse(await open_stream(http, url, headers))
            assert [e.id for e in await again.events()] == [final.id], held
        # Longer than any id the stream sends: refused as the schema says, not read as nothing held.
        async with http.get(url, headers={**bearer("alice"), "Last-Event-ID": "p" * 65}) as r:
            assert r.status == 400 and r.content_type == "application/problem+json"
            assert (await r.json())["type"].endswith("/bad_last_event_id")


async def test_decided_states_resume_and_a_stream_ends_after_sse_max_s(system, settings):
    s = msgspec.structs.replace(settings, sse_heartbeat_s=0.3, sse_max_s=1.2)
    system.settings = s
    system.start()  # no gateway: a reservation stays reserved until cancelled
    async with aiohttp.ClientSession() as http:
        c = Client(http, system.base_url, s.admin_token)
        assert (await c.put_sku("console-x", stock=1, payment="required", reservation_ttl_s=120))[0] == 200
        status, _, p = await c.buy("console-x", "erin", "k1", payment_token="tok_visa")
        assert status == 200 and p["status"] == "reserved"
        url = f"{system.base_url}/v1/purchases/{p['id']}/events"

        started = time.monotonic()
        stream = Sse(await open_stream(http, url, bearer("erin")))
        events = await stream.events()
        lived_s = time.monotonic() - started
        assert [e.data["status"] for e in events] == ["reserved"]
        assert events[0].data == p
        assert "hb" in stream.comments
        print(f"a stream with sse_max_s={s.sse_max_s} ended after {lived_s:.2f} s with "
              f"{len(stream.comments)} heartbeats (sse_heartbeat_s={s.sse_heartbeat_s})")

        resumed = Sse(await open_stream(http, url, {**bearer("erin"), "Last-Event-ID": events[0].id}))
        assert await resumed.next() == "hb"  # reserved is what it holds: nothing is repeated
        status, _, cancelled = await c.call("POST", f"/v1/purchases/{p['id']}/cancel",
                                            headers={"Prefer": "wait=5"}, user="erin")
        answered = time.monotonic()
        assert status == 200 and cancelled["status"] == "cancelled"
        tail = [await resumed.next_event()]
        print(f"the cancel's event arrived {1000 * (time.monotonic() - answered):.1f} ms after "
              "the cancel's own answer")
        tail += await resumed.events()
        assert [e.data for e in tail] == [cancelled]
        assert_in_history_order(events + tail)


async def test_another_buyers_stream_is_a_404_and_a_token_is_required(system, settings):
    system.start()
    async with aiohttp.ClientSession() as http:
        c = Client(http, system.base_url, settings.admin_token)
        assert (await c.put_sku("hot", stock=5))[0] == 200
        status, _, mine = await c.buy("hot", "alice", "k1")
        assert status == 200 and mine["status"] == "confirmed"
        url = f"{system.base_url}/v1/purchases/{mine['id']}/events"
        missing = f"{system.base_url}/v1/purchases/{purchase_id('alice', 'never-made')}/events"

        async with http.get(url, headers=bearer("mallory")) as theirs, \
                http.get(missing, headers=bearer("mallory")) as gone:
            assert theirs.status == gone.status == 404
            assert theirs.headers["Content-Type"].startswith("application/problem+json")
            a, b = await theirs.json(), await gone.json()
            assert (a["type"], a["title"]) == (b["type"], b["title"])
        for headers in ({}, {"Authorization": "Bearer nope"}):
            async with http.get(url, headers=headers) as r:
                assert r.status == 401 and r.headers["WWW-Authenticate"].startswith("Bearer")
        async with http.get(f"{system.base_url}/v1/purchases/nope/events", headers=bearer("alice")) as r:
            assert r.status == 404
        async with http.head(url, headers=bearer("alice")) as r:
            assert r.status == 405  # HEAD would hold a stream it never sends
        # The owner and an operator read it.
        for headers in (bearer("alice"), c.admin):
            events = await Sse(await open_stream(http, url, headers)).events()
            assert [e.data["status"] for e in events] == ["confirmed"]
            assert events[0].data == mine


async def test_streams_are_counted_and_bounded(system, settings):
    s = msgspec.structs.replace(settings, waiters_max=1, sku_streams_max=1)
    system.settings = s
    await seed_sku(s, "tee", stock=5)
    system.start_ingest()  # no committers: the purchase stays pending, its stream open
    # Each client holds one wait at most (waiters_max = 1): the streams come from two addresses.
    async with aiohttp.ClientSession() as http, session("127.0.0.2") as other, \
            session("127.0.0.3") as third:
        c = Client(http, system.base_url, s.admin_token)
        status, _, p = await c.buy("tee", "alice", "k1", wait_s=None)
        assert status == 202
        url = f"{system.base_url}/v1/purchases/{p['id']}/events"
        sku_url = f"{system.base_url}/v1/skus/tee/events"

        held = await open_stream(http, url, bearer("alice"))
        assert held.status == 200 and (await Sse(held).next_event()).data["status"] == "pending"
        held_sku = await open_stream(other, sku_url, {})
        assert held_sku.status == 200 and (await Sse(held_sku).next_event()).data["remaining"] == 5

        for client, target, headers in ((http, url, bearer("alice")), (third, sku_url, {})):
            async with client.get(target, headers=headers) as r:
                assert r.status == 503 and int(r.headers["Retry-After"]) >= 1, target
                assert (await r.json())["type"].endswith("/too_many_streams")
        # A long-poll meanwhile is answered at once (the one waiter slot is the stream's).
        status, _, same = await c.call("GET", f"/v1/purchases/{p['id']}?wait=5", user="alice")
        assert status == 200 and same["status"] == "pending"
        async with http.get(ingest_metrics_url(s)) as r:
            text = await r.text()
        assert 'flashsale_ingest_event_streams{kind="purchase"} 1.0' in text
        assert 'flashsale_ingest_event_streams{kind="sku"} 1.0' in text
        assert "flashsale_ingest_waiters 1.0" in text

        # Closed streams give their places back.
        held.close()
        held_sku.close()
        for client, target, headers in ((http, url, bearer("alice")), (third, sku_url, {})):
            for _ in range(50):  # the server notices the closed connection on its next tick
                async with client.get(target, headers={**headers, "Last-Event-ID": "x"}) as r:
                    if r.status == 200:
                        break
                await asyncio.sleep(0.2)
            assert r.status == 200, target


async def test_a_skus_stream_ticks_its_stock_down_and_skus_are_listed(system, settings):
    system.start()
    buyers = 12
    async with aiohttp.ClientSession() as http:
        c = Client(http, system.base_url, settings.admin_token)
        for name in ("drop", "drop-b", "drop-c"):
            assert (await c.put_sku(name, stock=buyers * 2, price_cents=500))[0] == 200
        url = f"{system.base_url}/v1/skus/drop/events"
        stream = Sse(await open_stream(http, url, {}))
        first = await stream.next_event()
        assert first is not None and first.name == "sku" and first.id is None
        assert first.data["remaining"] == buyers * 2
        status, _, public = await c.call("GET", "/v1/skus/drop")
        assert first.data == public

        results = await asyncio.gather(*(c.buy("drop", f"b{i}", "k1") for i in range(buyers)))
        assert all(r[2]["status"] == "confirmed" for r in results)
        seen = [first.data["remaining"]]
        while seen[-1] != buyers:
            update = await stream.next_event()
            assert update is not None
            seen.append(update.data["remaining"])
        assert seen == sorted(seen, reverse=True) and len(set(seen)) == len(seen), seen
        print(f"{buyers} purchases, {len(seen) - 1} SKU updates on the stream: {seen}")
        stream.resp.close()

        async with http.get(f"{system.base_url}/v1/skus/nope/events") as r:
            assert r.status == 404 and (await r.json())["type"].endswith("/not_found")

        status, _, page = await c.call("GET", "/v1/skus?limit=2")
        assert status == 200 and [x["sku"] for x in page["skus"]] == ["drop", "drop-b"]
        assert page["next_after"] == "drop-b" and page["skus"][0]["remaining"] == buyers
        status, _, last = await c.call("GET", "/v1/skus?limit=2&after=drop-b")
        assert [x["sku"] for x in last["skus"]] == ["drop-c"] and last["next_after"] is None
        status, _, everything = await c.call("GET", "/v1/skus")
        assert [x["sku"] for x in everything["skus"]] == ["drop", "drop-b", "drop-c"]
        for bad in ("0", "101", "x", "²"):
            status, _, problem = await c.call("GET", f"/v1/skus?limit={bad}")
            assert status == 400 and problem["type"].endswith("/bad_query"), bad
