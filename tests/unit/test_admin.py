"""flashsale.sku_changes's one path to a SkuUpsert: absent keeps, null clears, times are checked."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from importlib import resources

import pytest

from flashsale.sku_changes import TIME_MAX_MS, TIME_MIN_MS, AdminError, make_upsert, read_sale_file, to_ms
from proto.draw import valid_seed
from proto.messages import SKU_BOUNDS

START = datetime(2026, 11, 24, 13, 0, tzinfo=UTC)


def test_absent_fields_keep_their_value():
    u = make_upsert("a", {"stock": 5})
    assert (u.sku, u.stock) == ("a", 5)
    assert u.price_cents is u.max_per_user is u.payment is u.reservation_ttl_s is None
    assert u.sale_start_ms is u.sale_end_ms is None
    assert u.clear == []


def test_every_field_is_carried():
    u = make_upsert("a", {"stock": 5, "price_cents": 250, "max_per_user": 2, "payment": "required",
                          "reservation_ttl_s": 60, "sale_start": START,
                          "sale_end": START + timedelta(hours=1)})
    assert (u.price_cents, u.max_per_user, u.payment, u.reservation_ttl_s) == (250, 2, "required", 60)
    assert u.sale_start_ms == int(START.timestamp()) * 1000
    assert u.sale_end_ms == u.sale_start_ms + 3_600_000


def test_null_clears_cap_and_window_in_proto_names():
    u = make_upsert("a", {"stock": 5, "max_per_user": None, "sale_start": None, "sale_end": None})
    assert u.clear == ["max_per_user", "sale_start_ms", "sale_end_ms"]
    assert u.max_per_user is u.sale_start_ms is u.sale_end_ms is None


@pytest.mark.parametrize("name", ["stock", "price_cents", "payment", "reservation_ttl_s"])
def test_null_is_refused_for_fields_without_a_none(name: str):
    fields: dict[str, object] = {"stock": 5, name: None}
    with pytest.raises(AdminError, match="cannot be null") as e:
        make_upsert("a", fields)
    assert e.value.field == name


def test_request_ids_are_fresh():
    assert make_upsert("a", {"stock": 1}).request_id != make_upsert("a", {"stock": 1}).request_id


def test_a_sale_file_entry_may_name_its_sku():
    assert make_upsert("a", {"sku": "a", "stock": 1}).sku == "a"


@pytest.mark.parametrize("fields, field", [
    ({}, "stock"),
    ({"stock": "5"}, "stock"),
    ({"stock": True}, "stock"),
    ({"stock": 5, "price_cents": 2.5}, "price_cents"),
    ({"stock": 5, "payment": "card"}, "payment"),
    ({"stock": 5, "sale_start": "next tuesday"}, "sale_start"),
    ({"stock": 5, "sale_end": [2026]}, "sale_end"),
])
def test_bad_values_are_admin_errors_naming_the_field(fields: dict[str, object], field: str):
    with pytest.raises(AdminError) as e:
        make_upsert("a", fields)
    assert e.value.field == field


def test_unknown_fields_are_refused():
    with pytest.raises(AdminError, match="unknown SKU fields"):
        make_upsert("a", {"stock": 5, "colour": "red"})


@pytest.mark.parametrize("end", [START, START - timedelta(milliseconds=1)])
def test_sale_end_must_be_after_sale_start(end: datetime):
    with pytest.raises(AdminError, match="sale_end must be after sale_start") as e:
        make_upsert("a", {"stock": 5, "sale_start": START, "sale_end": end})
    assert e.value.field == "sale_end"


def test_one_sided_window_changes_are_not_compared():
    # Only the committer knows the other bound's current value.
    assert make_upsert("a", {"stock": 5, "sale_end": START}).sale_end_ms is not None


def test_times_in_every_accepted_form_agree():
    ms = 1_795_957_200_123
    as_dt = datetime(2026, 11, 29, 13, 0, 0, 123_000, tzinfo=UTC)
    assert ms == to_ms(as_dt) == to_ms(as_dt.replace(tzinfo=None))  # naive = UTC
    assert ms == to_ms("2026-11-29T13:00:00.123Z") == to_ms("2026-11-29T14:00:00.123+01:00")
    assert ms == to_ms(ms) == to_ms(float(ms))
    assert to_ms(None) is None


def test_microseconds_round_down_to_the_millisecond_exactly():
    assert to_ms(datetime(2026, 1, 1, 0, 0, 0, 999_999, tzinfo=UTC)) % 1000 == 999
    assert to_ms(datetime(1969, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC)) == -1


@pytest.mark.parametrize("value", [
    datetime(1, 1, 1, 0, 30, tzinfo=timezone(timedelta(hours=1))),  # year 0 in UTC
    datetime(9999, 12, 31, 23, 30, tzinfo=timezone(-timedelta(hours=1))),  # year 10000 in UTC
    "0001-01-01T00:00:00+00:01",
    TIME_MIN_MS - 1,
    TIME_MAX_MS + 1,
    float("inf"),
    float("nan"),
    True,
])
def test_times_outside_what_readers_can_format_are_refused(value: object):
    with pytest.raises(AdminError, match="sale_start"):
        make_upsert("a", {"stock": 5, "sale_start": value})


def test_the_edges_of_the_range_are_accepted_and_formattable():
    low = make_upsert("a", {"stock": 5, "sale_start": datetime(1, 1, 1, tzinfo=UTC)}).sale_start_ms
    high = make_upsert("a", {"stock": 5, "sale_end": "9999-12-31T23:59:59.999Z"}).sale_end_ms
    assert (low, high) == (TIME_MIN_MS, TIME_MAX_MS)
    # What readers do with them: back to a UTC datetime, seconds first.
    assert datetime.fromtimestamp(high // 1000, tz=UTC).year == 9999
    assert datetime.fromtimestamp(low // 1000, tz=UTC).year == 1


def test_sale_file_entries_become_upserts(tmp_path):
    path = tmp_path / "sale.toml"
    path.write_text('[[sku]]\nsku = "a"\nstock = 3\nsale_start = 2026-11-24T13:00:00Z\n'
                    '[[sku]]\nsku = "b"\nstock = 1\npayment = "required"\n')
    a, b = read_sale_file(path)
    assert (a.sku, a.stock, a.sale_start_ms) == ("a", 3, int(START.timestamp()) * 1000)
    assert (b.sku, b.payment) == ("b", "required")


def test_a_sale_file_entry_without_a_sku_is_an_admin_error(tmp_path):
    path = tmp_path / "sale.toml"
    path.write_text("[[sku]]\nstock = 3\n")
    with pytest.raises(AdminError, match="needs a sku name"):
        read_sale_file(path)


@pytest.mark.parametrize("sku", ["", "a\x00b", "tee\n", "tee shirt", "é", "-tee", "x" * 65])
def test_a_sku_outside_the_grammar_is_an_admin_error(sku: str):
    with pytest.raises(AdminError) as exc:
        make_upsert(sku, {"stock": 1})
    assert exc.value.field == "sku"


def test_a_draw_window_comes_with_a_fresh_seed_from_every_form(tmp_path):
    u = make_upsert("a", {"stock": 5, "sale_start": START, "draw_window_s": 2})
    assert u.draw_window_s == 2 and valid_seed(u.draw_seed or "")
    assert make_upsert("a", {"stock": 5}).draw_seed != u.draw_seed  # the writer keeps the first
    path = tmp_path / "sale.toml"
    path.write_text('[[sku]]\nsku = "d"\nstock = 3\nsale_start = 2026-11-24T13:00:00Z\n'
                    "draw_window_s = 5\n")
    (d,) = read_sale_file(path)
    assert d.draw_window_s == 5


@pytest.mark.parametrize("window", [-1, 3601, "2", True])
def test_a_draw_window_out_of_range_is_an_admin_error(window: object):
    with pytest.raises(AdminError) as e:
        make_upsert("a", {"stock": 1, "draw_window_s": window})
    assert e.value.field == "draw_window_s"


@pytest.mark.parametrize("field, value", [
    ("stock", -1), ("stock", 2**63), ("price_cents", 10**15 + 1), ("price_cents", 10**20),
    ("max_per_user", 0), ("reservation_ttl_s", 0), ("reservation_ttl_s", 7 * 24 * 3600 + 1),
])
def test_numbers_outside_what_the_store_holds_are_admin_errors(field: str, value: int):
    """The CLI and sale files hold to the bounds ingest's PUT does (proto.messages.SKU_BOUNDS):
    nothing reaches a writer that its batch could not store."""
    with pytest.raises(AdminError, match=f"{field} must be in") as e:
        make_upsert("a", {"stock": 5, field: value})
    assert e.value.field == field


def test_the_edges_of_every_bound_are_accepted():
    for name, (low, high) in SKU_BOUNDS.items():
        field = {"sale_start_ms": "sale_start", "sale_end_ms": "sale_end"}.get(name, name)
        for value in (low, high):
            fields: dict[str, object] = {"stock": 5, field: value}
            if name == "draw_window_s" and value:
                fields["sale_start"] = START
            assert getattr(make_upsert("a", fields), name) == value, (name, value)


@pytest.mark.parametrize("text", ["[[sku]\n", "sku = 5\n", "\xff"])
def test_an_unreadable_sale_file_is_an_admin_error(tmp_path, text: str):
    path = tmp_path / "sale.toml"
    path.write_bytes(text.encode("latin-1"))
    with pytest.raises(AdminError, match=r"sale\.toml"):
        read_sale_file(path)
    with pytest.raises(AdminError, match="not a readable sale file"):
        read_sale_file(tmp_path / "missing.toml")


def test_the_openapi_document_states_the_same_bounds():
    doc = json.loads(resources.files("ingest").joinpath("openapi.json").read_bytes())
    upsert = doc["components"]["schemas"]["SkuUpsertRequest"]["properties"]
    for name, (low, high) in SKU_BOUNDS.items():
        if name.endswith("_ms"):
            continue  # RFC 3339 strings there, held to years 1..9999 by to_ms
        assert (upsert[name]["minimum"], upsert[name]["maximum"]) == (low, high), name
