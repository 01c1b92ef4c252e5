"""The wire contract's pure parts: ids, sharding, codecs."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proto.identifiers import PURCHASE_ID
from proto.ids import id_key, purchase_id, request_hash
from proto.messages import Confirm, Purchase, ResultBatch, encode, intent_decoder, result_decoder
from proto.sharding import shard_of
from proto.subjects import Names

KEY = id_key("unit-test-secret")


# What the edge lets through: USER_ID and IDEMPOTENCY_KEY are visible ASCII.
VISIBLE = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=50)


@given(VISIBLE, VISIBLE)
def test_purchase_id_is_deterministic_and_well_formed(user, key):
    pid = purchase_id(KEY, user, key)
    assert pid == purchase_id(KEY, user, key)
    assert PURCHASE_ID.matches(pid)


def test_purchase_id_separates_user_and_key():
    assert purchase_id(KEY, "ab", "c") != purchase_id(KEY, "a", "bc")
    assert purchase_id(KEY, "u", "k1") != purchase_id(KEY, "u", "k2")
    assert not PURCHASE_ID.matches("p_xyz") and not PURCHASE_ID.matches("q_" + "0" * 30)


def test_purchase_id_asserts_a_keyed_hash_and_a_key_without_nul():
    with pytest.raises(AssertionError):
        purchase_id(b"", "alice", "k")  # unkeyed: anyone could compute it
    with pytest.raises(AssertionError):
        purchase_id(b"short", "alice", "k")  # not a key from id_key
    with pytest.raises(AssertionError):
        purchase_id(KEY, "alice", "k\x00")  # the separator inside the key: ids could collide
    with pytest.raises(AssertionError):
        id_key("")
    with pytest.raises(AssertionError):
        request_hash(b"")


def test_shard_of_is_stable_and_in_range():
    # Pinned values: a change here would move live SKUs to another committer.
    assert [shard_of(s, 4) for s in ("sneaker-42", "console-x", "a", "b")] == [2, 2, 3, 1]
    for n in (1, 2, 3, 8):
        assert all(0 <= shard_of(f"sku-{i}", n) < n for i in range(200))
    assert {shard_of(f"sku-{i}", 4) for i in range(1000)} == {0, 1, 2, 3}


def test_request_hash_differs_by_body():
    assert request_hash(b"a") == request_hash(b"a") != request_hash(b"b")


def test_intents_and_results_round_trip():
    p = Purchase(id="p_1", sku="s", qty=1, user_id="u", request_hash="h", accepted_at_ms=1)
    c = Confirm(id="p_1", psp_ref="pi", amount_cents=5)
    assert intent_decoder.decode(encode(p)) == p
    assert intent_decoder.decode(encode(c)) == c
    batch = ResultBatch(shard=1, epoch=2)
    assert result_decoder.decode(encode(batch)) == batch


def test_subjects_are_namespaced():
    n = Names("t7")
    assert n.intent(1, "purchase", "p_x") == "t7.intents.1.p.p_x"
    assert n.intents_stream(1) == "T7_INTENTS_1"
    assert n.intents_of_shard(1) == "t7.intents.1.>"
