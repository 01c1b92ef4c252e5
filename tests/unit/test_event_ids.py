"""Event ids of a purchase's stream name the state the client holds: ordered along the
purchase's history, so a resume sends only what is newer."""

from __future__ import annotations

from ingest.events.sse import event_order, is_news

HISTORY = ["pending", "pending.7", "pending.7.1200", "pending.3.400", "pending.0",
           "reserved.1764600000100", "confirmed.1764600000200"]


def test_ids_are_ordered_along_a_purchases_history():
    orders = [event_order(i) for i in HISTORY]
    assert None not in orders and orders == sorted(orders)


def test_a_resume_sends_only_what_is_newer_than_what_the_client_holds():
    for i, held in enumerate(HISTORY):
        for j, current in enumerate(HISTORY):
            expected = current != held and event_order(current) >= event_order(held)
            assert is_news(current, held) == expected, (held, current)
            if j < i and event_order(current) < event_order(held):
                assert not is_news(current, held)  # never back in time
    assert is_news("pending", None)
    # Eta alone changed at the same position: news, though not a step forward.
    assert is_news("pending.7.900", "pending.7.1200")


def test_strings_that_are_not_our_ids_are_ignored():
    for junk in ("", "x", "pending.x", "pending.²", "confirmed.", "confirmed.1e9", "shipped.5",
                 "pending." + "9" * 100, "confirmed.-1"):
        assert event_order(junk) is None, junk
        assert is_news("pending", junk)  # the client gets the current state
