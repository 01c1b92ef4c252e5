"""Parsing JetStream's answers to a publish and to a stream info request (pure)."""

from __future__ import annotations

import asyncio

import pytest

from ingest.errors import Overloaded
from ingest.publisher import PendingReplies, ack_stored_now, stream_last_seq


def test_a_new_message_is_stored_now_at_its_sequence():
    assert ack_stored_now(b'{"stream":"FS_INTENTS_0","seq":7}') == 7


def test_a_duplicate_msg_id_is_not_stored_again():
    assert ack_stored_now(b'{"stream":"FS_INTENTS_0","seq":7,"duplicate":true}') == 0


def test_the_per_subject_limit_means_already_stored():
    data = (b'{"error":{"code":503,"err_code":10077,'
            b'"description":"maximum messages per subject exceeded"}}')
    assert ack_stored_now(data) == 0


@pytest.mark.parametrize(("data", "cause"), [
    (b"", "no_stream"),
    (b'{"error":{"code":503,"err_code":10077,"description":"maximum bytes exceeded"}}', "stream_full"),
    (b'{"error":{"code":503,"err_code":10008,"description":"jetstream cluster not ready"}}',
     "jetstream_refused"),
])
def test_nothing_stored_is_overload(data: bytes, cause: str):
    with pytest.raises(Overloaded) as exc:
        ack_stored_now(data)
    assert exc.value.cause == cause


def test_stream_info_answers():
    assert stream_last_seq(b'{"config":{},"state":{"messages":3,"first_seq":5,"last_seq":7}}') == 7
    assert stream_last_seq(b'{"state":{"messages":0}}') == 0
    with pytest.raises(Overloaded):
        stream_last_seq(b'{"error":{"code":404,"err_code":10059,"description":"stream not found"}}')
    with pytest.raises(Overloaded):
        stream_last_seq(b"")


async def test_overdue_replies_fail_oldest_first():
    loop = asyncio.get_running_loop()
    pending = PendingReplies()
    early, late = loop.create_future(), loop.create_future()
    pending.add("r1", early, deadline=1.0)
    pending.add("r2", late, deadline=5.0)
    assert pending.expire(now=2.0) == 1 and len(pending) == 1
    with pytest.raises(Overloaded):
        early.result()
    assert not late.done()
    pending.fail_all("shutting_down")
    assert late.done() and len(pending) == 0
