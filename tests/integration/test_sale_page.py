"""The sale page in a real headless Chromium (Debian's `chromium`, driven by Playwright with the
system browser): a buyer signs in, picks a SKU, buys with the keyboard, and sees the purchase's
final state and the stock ticking down. The development token helper exists only when
configured; without it the page takes a pasted token."""

from __future__ import annotations

import os
import re
import time

import aiohttp
import msgspec
import pytest
from playwright.async_api import Browser, Page, async_playwright, expect

from tests.auth import token
from tests.conftest import seed_sku
from tests.integration.test_ingest_flow import Client

# Debian's package (the Makefile's test target installs it): Playwright downloads nothing.
CHROMIUM = "/usr/bin/chromium"
HAVE_CHROMIUM = os.path.exists(CHROMIUM)
UI_TIMEOUT_MS = 15_000


@pytest.fixture
async def browser():
    assert HAVE_CHROMIUM, f"{CHROMIUM} missing: `make test` installs it (apt-get install chromium)"
    async with async_playwright() as pw:
        # --no-sandbox: the suite runs as root, where Chromium's sandbox refuses to start.
        b = await pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield b
        await b.close()


async def open_page(browser: Browser, url: str) -> tuple[Page, list[str]]:
    """A phone-sized page at `url`, and the list its console errors (CSP refusals included) go to."""
    page = await browser.new_page(viewport={"width": 412, "height": 915})
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    await page.goto(url)
    return page, errors


async def assert_every_field_is_labelled(page: Page) -> None:
    unlabelled = await page.evaluate(
        "[...document.querySelectorAll('input, select, textarea')]"
        ".filter((el) => !el.labels || el.labels.length === 0).map((el) => el.id)"
    )
    assert unlabelled == []


async def buy(page: Page, sku: str) -> None:
    await page.get_by_label("Item").select_option(sku)
    await page.get_by_role("button", name="Buy").press("Enter")  # the keyboard, not a click


async def test_a_purchase_made_through_the_page_shows_its_final_state(system, settings, browser, tmp_path):
    s = msgspec.structs.replace(settings, dev_token_endpoint=True)
    system.settings = s
    system.start()
    async with aiohttp.ClientSession() as http:
        c = Client(http, system.base_url, s.admin_token)
        assert (await c.put_sku("sneaker-42", stock=3, price_cents=1500, max_per_user=1))[0] == 200
        assert (await c.put_sku("console-x", stock=1, price_cents=49900, payment="required"))[0] == 200

        started = time.monotonic()
        page, errors = await open_page(browser, system.base_url + "/")
        await expect(page.get_by_label("Item")).to_have_value("console-x")  # the first by name
        await assert_every_field_is_labelled(page)
        await expect(page.locator("#paste-signin")).to_be_hidden()
        await page.get_by_label("Buyer name").fill("alice")
        await page.get_by_label("Buyer name").press("Enter")
        await expect(page.locator("#who")).to_have_text("Signed in as alice.")

        await page.get_by_label("Item").select_option("sneaker-42")
        stock = page.locator("#stock-text")
        await expect(stock).to_contain_text("3 of 3 left")
        await expect(page.get_by_label("Test card token")).to_be_hidden()  # payment = none
        await buy(page, "sneaker-42")
        status = page.locator("#status")
        await expect(status).to_have_attribute("data-status", "confirmed", timeout=UI_TIMEOUT_MS)
        await expect(status).to_have_text("Confirmed: 1 × sneaker-42")
        # Pending (the 202), then confirmed; or confirmed already, when the writer decided it
        # before the 202 went out (answered once the intent is stored and read back).
        log = page.locator("#log li")
        await expect(log.last).to_contain_text("Confirmed")
        assert await log.count() in (1, 2)
        await expect(stock).to_contain_text("2 of 3 left", timeout=UI_TIMEOUT_MS)  # over EventSource
        print(f"page opened, signed in, bought and saw it confirmed in {time.monotonic() - started:.2f} s")

        # The page's purchase is the buyer's real one.
        pid = re.search(r"p_[0-9a-f]{30}", await page.locator("#detail").inner_text())
        assert pid is not None
        status_code, _, stored = await c.call("GET", f"/v1/purchases/{pid.group()}", user="alice")
        assert status_code == 200 and stored["status"] == "confirmed" and stored["amount_cents"] == 1500
        artifact = tmp_path / "sale-page.png"
        await page.screenshot(path=str(artifact), full_page=True)
        print(f"screenshot: {artifact}")

        # A second one is over the per-buyer cap: rejected, with the reason, on the same page.
        await buy(page, "sneaker-42")
        await expect(status).to_have_attribute("data-status", "rejected", timeout=UI_TIMEOUT_MS)
        await expect(status).to_have_text("Rejected: over the limit per buyer")
        await page.screenshot(path=str(tmp_path / "sale-page-rejected.png"), full_page=True)
        assert errors == []


async def test_without_the_dev_helper_the_page_takes_a_pasted_token(system, settings, browser):
    s = msgspec.structs.replace(settings, dev_token_endpoint=False)  # production mode
    system.settings = s
    system.start()
    async with aiohttp.ClientSession() as http:
        c = Client(http, system.base_url, s.admin_token)
        assert (await c.put_sku("tee", stock=2, price_cents=900))[0] == 200
        status, _, _ = await c.call("POST", "/dev/token", {"user": "bob"})
        assert status == 404
        status, _, doc = await c.call("GET", "/openapi.json")
        assert "/dev/token" not in doc["paths"] and "/v1/purchases/{id}/events" in doc["paths"]

        page, errors = await open_page(browser, system.base_url + "/?sku=tee")
        await expect(page.locator("#dev-signin")).to_be_hidden()
        await page.get_by_label("Buyer token").fill(token("bob"))
        await page.get_by_role("button", name="Use this token").press("Enter")
        await expect(page.locator("#who")).to_have_text("Signed in as bob.")
        await expect(page.get_by_label("Buyer token")).to_have_value("")  # not left on screen
        await expect(page.get_by_label("Item")).to_have_value("tee")
        await buy(page, "tee")
        await expect(page.locator("#status")).to_have_attribute(
            "data-status", "confirmed", timeout=UI_TIMEOUT_MS)
        await expect(page.locator("#stock-text")).to_contain_text("1 of 2 left", timeout=UI_TIMEOUT_MS)
        assert errors == []


async def test_the_page_resumes_its_purchase_stream_without_repeats(system, settings, browser):
    """The server ends each stream after sse_max_s; the page reconnects with Last-Event-ID and
    shows the decision once it comes, each state logged once."""
    s = msgspec.structs.replace(settings, dev_token_endpoint=True, sse_max_s=0.8, sse_retry_ms=100)
    system.settings = s
    await seed_sku(s, "tee", stock=2)
    system.start_ingest()  # no committers yet: the purchase stays pending across reconnects
    page, errors = await open_page(browser, system.base_url + "/?sku=tee")
    await page.get_by_label("Buyer name").fill("dora")
    await page.get_by_label("Buyer name").press("Enter")
    await expect(page.locator("#who")).to_have_text("Signed in as dora.")
    streams: list[str] = []
    page.on("request", lambda r: streams.append(r.headers.get("last-event-id", "-"))
            if r.url.endswith("/events") and "/purchases/" in r.url else None)
    await buy(page, "tee")
    status = page.locator("#status")
    await expect(status).to_have_attribute("data-status", "pending")
    for _ in range(100):  # two streams ended by the server, the page came back each time
        if len(streams) >= 3:
            break
        await page.wait_for_timeout(100)
    assert len(streams) >= 3, streams
    for shard in range(s.shards):
        system.start_committer(shard)
    await expect(status).to_have_attribute("data-status", "confirmed", timeout=UI_TIMEOUT_MS)
    log = await page.evaluate(
        "[...document.querySelectorAll('#log li')].map((li) => li.lastChild.textContent)")
    assert len(log) == 2 and log[0].startswith("Pending") and log[1].startswith("Confirmed"), log
    assert streams[0] == "-" and all(held.startswith("pending") for held in streams[1:]), streams
    print(f"{len(streams)} purchase streams, Last-Event-ID sent: {streams}")
    assert errors == []


async def test_the_dev_token_helper_signs_tokens_that_buy(system, settings):
    s = msgspec.structs.replace(settings, dev_token_endpoint=True)
    system.settings = s
    system.start()
    async with aiohttp.ClientSession() as http:
        c = Client(http, system.base_url, s.admin_token)
        assert (await c.put_sku("tee", stock=2))[0] == 200
        status, _, minted = await c.call("POST", "/dev/token", {"user": "carol"})
        assert status == 200 and minted["user"] == "carol" and minted["expires_in_s"] > 0
        headers = {"Authorization": f"Bearer {minted['token']}", "Prefer": "wait=5"}
        status, _, p = await c.call("POST", "/v1/purchases", {"sku": "tee", "qty": 1}, headers)
        assert status == 200 and p["user_id"] == "carol" and p["status"] == "confirmed"
        for body in ({}, {"user": ""}, {"user": "has space"}, {"user": "x", "admin": True}):
            status, _, problem = await c.call("POST", "/dev/token", body)
            assert status == 422 and problem["type"].endswith("/validation"), body
        status, _, doc = await c.call("GET", "/openapi.json")
        assert "/dev/token" in doc["paths"]
