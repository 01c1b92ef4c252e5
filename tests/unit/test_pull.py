"""The puller's status handling (flashsale.pull.PullRequest), without a server: what a message,
a heartbeat and the end of a pull request do to the open request's credit; messages handed back."""

from __future__ import annotations

import json
from collections import deque
from dataclasses import dataclass
from typing import Any, cast

import pytest

from flashsale.pull import Puller, PullRequest, _Arrivals


@dataclass
class Delivered:
    """Shaped like nats-py's Msg where the status logic reads it."""

    data: bytes = b""
    headers: dict[str, str] | None = None


def message(data: bytes = b"x") -> Delivered:
    return Delivered(data)


def status(code: str, description: str = "") -> Delivered:
    headers = {"Status": code}
    if description:
        headers["Description"] = description
    return Delivered(b"", headers)


def opened(batch_max: int = 10, now_s: float = 100.0) -> PullRequest:
    request = PullRequest(expires_s=5.0)
    request.renew(batch_max, now_s)
    return request


def test_a_message_is_taken_and_uses_one_credit():
    request = opened(3)
    assert request.take(message())
    assert request.credit == 2
    assert request.is_open(100.0)


def test_headers_without_a_status_are_a_message():
    request = opened(3)
    assert request.take(Delivered(b"x", {"Nats-Msg-Id": "a"}))
    assert request.credit == 2


def test_a_heartbeat_is_dropped_and_keeps_the_request_open():
    request = opened(3)
    assert not request.take(status("100", "Idle Heartbeat"))
    assert request.credit == 3
    assert request.is_open(100.0)


@pytest.mark.parametrize("code", ["404", "408", "409"])
def test_the_end_of_a_request_is_dropped_and_asks_for_a_new_one(code: str):
    request = opened(3)
    assert not request.take(status(code, "Request Timeout"))
    assert request.credit == 0
    assert not request.is_open(100.0)


@pytest.mark.parametrize("code", ["400", "503"])
def test_any_other_error_status_also_ends_the_request(code: str):
    request = opened(3)
    assert not request.take(status(code))
    assert not request.is_open(100.0)


def test_an_unknown_informational_status_leaves_the_request_alone():
    request = opened(3)
    assert not request.take(status("101"))
    assert request.credit == 3


def test_drain_returns_messages_in_order_and_consumes_statuses_on_the_way():
    request = opened(5)
    queue = deque([message(b"a"), status("100"), message(b"b"), message(b"c")])
    assert [m.data for m in request.drain(queue, 2)] == [b"a", b"b"]
    assert [m.data for m in queue] == [b"c"]  # the rest waits for the next call
    assert request.credit == 3
    assert [m.data for m in request.drain(queue, 2)] == [b"c"]
    assert not queue


def test_drain_after_the_request_ended_still_returns_what_arrived_before():
    request = opened(5)
    queue = deque([message(b"a"), status("408"), message(b"b")])
    # b arrived for a newer request (sent after the 408); it is delivered all the same.
    assert [m.data for m in request.drain(queue, 10)] == [b"a", b"b"]
    assert not request.is_open(100.0)


def test_drain_of_only_statuses_returns_nothing():
    request = opened(5)
    queue = deque([status("100"), status("404")])
    assert request.drain(queue, 10) == []
    assert not queue
    assert request.credit == 0


def test_a_request_is_open_until_its_credit_is_used_up():
    request = opened(2)
    request.drain(deque([message(), message()]), 10)
    assert request.credit == 0 and not request.is_open(100.0)


def test_a_request_is_open_until_its_deadline():
    request = opened(2, now_s=100.0)
    assert request.is_open(104.9)
    assert not request.is_open(105.0)


def test_a_new_request_is_never_open_before_one_is_sent():
    assert not PullRequest(expires_s=5.0).is_open(0.0)


def test_renew_resets_the_credit_and_states_batch_and_expiry_in_nanoseconds():
    request = PullRequest(expires_s=2.5)
    body = json.loads(request.renew(7, now_s=10.0))
    assert body == {"batch": 7, "expires": 2_500_000_000}
    assert request.credit == 7 and request.deadline_s == 12.5


class FakeClient:
    """What Puller sends on: pull requests are only counted."""

    def __init__(self) -> None:
        self.requests = 0

    async def publish(self, subject: str, payload: bytes, reply: str = "") -> None:
        self.requests += 1


async def test_messages_handed_back_come_first_and_cost_no_credit():
    arrivals = _Arrivals()
    request = PullRequest(expires_s=5.0)
    client = FakeClient()
    puller = Puller(cast(Any, client), cast(Any, None), "inbox", "next", request, arrivals)
    for i in range(5):
        await arrivals.on_msg(cast(Any, message(f"m{i}".encode())))
    first = await puller.fetch(10, timeout_s=0)
    assert [m.data for m in first] == [b"m0", b"m1", b"m2", b"m3", b"m4"]
    assert client.requests == 1
    credit = request.credit
    puller.unread(first[2:])  # a transaction took two, the rest waits for the next
    await arrivals.on_msg(cast(Any, message(b"m5")))
    again = await puller.fetch(10, timeout_s=0)
    assert [m.data for m in again] == [b"m2", b"m3", b"m4", b"m5"]
    assert request.credit == credit - 1  # only the new arrival used one
