"""The fake PSP's parts on their own (gateway/fakepsp/): its command line, its ledger's pages and
snapshot, its error shapes, and which module serves which route. The whole fake, served and
driven through the real adapter: tests/unit/test_fakepsp.py."""

from __future__ import annotations

import pytest

from gateway.fakepsp import __main__ as process
from gateway.fakepsp import admin, handlers
from gateway.fakepsp.app import create_app
from gateway.fakepsp.config import FakePspConfig
from gateway.fakepsp.errors import ApiError, int_param
from gateway.fakepsp.ledger import Ledger


def test_the_command_line_overrides_the_environment():
    env = {"FAKEPSP_PORT": "9100", "FAKEPSP_DECLINE_RATE": "0.25"}
    config, host, port = process.parse([], env)
    assert (host, port, config.rates.decline_rate, config.ledger_path) == ("127.0.0.1", 9100, 0.25, None)
    config, _, port = process.parse(["--port", "9200", "--ledger", "/tmp/l.json"], env)
    assert (port, config.ledger_path) == (9200, "/tmp/l.json")


def intent(n: int, purchase_id: str = "p") -> dict[str, object]:
    return {"id": f"pi_{n}", "metadata": {"purchase_id": purchase_id}}


def test_the_ledger_pages_newest_first_past_forgotten_intents():
    ledger = Ledger()
    for n in range(5):
        ledger.add_intent(intent(n))
    ledger.forget_intent("pi_3")
    page, more = ledger.page(2, None)
    assert [pi["id"] for pi in page] == ["pi_4", "pi_2"] and more
    page, more = ledger.page(2, "pi_2")
    assert [pi["id"] for pi in page] == ["pi_1", "pi_0"] and not more
    assert ledger.by_purchase["p"] == ["pi_0", "pi_1", "pi_2", "pi_4"]
    with pytest.raises(ApiError) as unknown:
        ledger.page(2, "pi_9")
    assert unknown.value.status == 400


def test_the_ledger_survives_its_snapshot():
    ledger = Ledger()
    ledger.add_intent(intent(1))
    ledger.refunds["re_1"] = {"id": "re_1", "payment_intent": "pi_1"}
    again = Ledger.restore(ledger.snapshot())
    assert again.get("pi_1") == intent(1) and again.refunds == ledger.refunds
    with pytest.raises(ApiError) as missing:
        again.get("pi_2")
    assert (missing.value.status, missing.value.body["error"]["code"]) == (404, "resource_missing")


def test_a_malformed_integer_is_the_callers_error():
    assert int_param({}, "limit", 10) == 10
    assert int_param({"limit": "3"}, "limit", 10) == 3
    with pytest.raises(ApiError) as bad:
        int_param({"limit": "x" * 80}, "limit", 10)
    assert bad.value.status == 400 and bad.value.body["error"]["param"] == "limit"


def test_stripes_api_and_the_admin_api_are_served_by_their_modules():
    app = create_app(FakePspConfig())
    served = {(r.method, r.resource.canonical): r.handler for r in app.router.routes()
              if r.resource is not None}
    assert served[("POST", "/v1/payment_intents")] is handlers.create_intent
    assert served[("GET", "/healthz")] is handlers.healthz
    assert served[("POST", "/admin/config")] is admin.set_config
    assert served[("DELETE", "/admin/payment_intents/{id}")] is admin.forget
