// The live sale page: sign in, pick an item, buy, and watch the purchase through the queue.
// Plain JavaScript, no build step. The SKU's stock comes over EventSource (public); the
// purchase's events need the buyer's token, which EventSource cannot send, so they are read
// with fetch() and parsed here (the token never goes into a URL).
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const meta = (name) => document.querySelector(`meta[name="${name}"]`).content;
  const DEV_TOKENS = meta("flashsale-dev-tokens") === "true";
  const QTY_MAX = Number(meta("flashsale-qty-max")) || 1;
  const MONEY = new Intl.NumberFormat(undefined, {
    style: "currency", currency: meta("flashsale-currency") || "USD",
  });
  const FINAL = new Set(["confirmed", "rejected", "expired", "cancelled"]);
  const REASONS = {
    sold_out: "sold out",
    limit_exceeded: "over the limit per buyer",
    sale_not_open: "the sale has not started yet",
    sale_ended: "the sale has ended",
    unknown_sku: "no such item",
    payment_declined: "the payment was declined",
    payment_failed: "the payment failed",
    buyer_cancelled: "cancelled by you",
    ttl_passed: "the reservation ran out of time",
    already_in_draw: "you are already in the draw",
    draw_full: "the draw is full",
  };
  const LOG_MAX = 50;

  let token = null; // the buyer's JWT, in this page's memory only
  let skuStream = null; // EventSource of the chosen SKU
  let purchaseStream = null; // AbortController of the purchase's event stream
  const skus = new Map(); // SKU name -> its latest view

  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
  const money = (cents) => MONEY.format(cents / 100);
  const seconds = (ms) => (ms < 10000 ? `${(ms / 1000).toFixed(1)} s` : `${Math.round(ms / 1000)} s`);
  const clock = (iso) => new Date(iso).toLocaleTimeString();

  function newKey() {
    // crypto.randomUUID needs a secure context; getRandomValues works on plain http too.
    const bytes = crypto.getRandomValues(new Uint8Array(16));
    return "page-" + Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  function subjectOf(jwt) {
    // For display only: the server verifies the token, the page just reads whose it is.
    try {
      const payload = jwt.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
      return JSON.parse(atob(payload)).sub || null;
    } catch {
      return null;
    }
  }

  function problemText(problem, status) {
    return (problem && (problem.detail || problem.title)) || `HTTP ${status}`;
  }

  // -- who is buying ---------------------------------------------------------------------

  function signedIn(jwt, name) {
    token = jwt;
    $("who").textContent = `Signed in as ${name}.`;
    updateBuyButton();
  }

  $("dev-signin").addEventListener("submit", async (e) => {
    e.preventDefault();
    const user = $("buyer").value.trim();
    try {
      const resp = await fetch("/dev/token", {
        method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify({user}),
      });
      const body = await resp.json();
      if (!resp.ok) throw new Error(problemText(body, resp.status));
      signedIn(body.token, body.user);
    } catch (err) {
      $("who").textContent = `Sign-in failed: ${err.message}`;
    }
  });

  $("paste-signin").addEventListener("submit", (e) => {
    e.preventDefault();
    const jwt = $("token").value.trim();
    $("token").value = ""; // not left on screen
    signedIn(jwt, subjectOf(jwt) || "the token's buyer");
  });

  // -- what to buy -----------------------------------------------------------------------

  async function loadSkus() {
    let list = [];
    try {
      const resp = await fetch("/v1/skus", {cache: "no-store"});
      list = (await resp.json()).skus || [];
    } catch {
      $("stock-text").textContent = "Could not load the items; reload the page to retry.";
      return;
    }
    const select = $("sku");
    select.replaceChildren(...list.map((s) => new Option(s.sku, s.sku)));
    for (const s of list) skus.set(s.sku, s);
    if (!list.length) {
      $("stock-text").textContent = "Nothing is on sale yet.";
      return;
    }
    const wanted = new URLSearchParams(location.search).get("sku");
    if (wanted && skus.has(wanted)) select.value = wanted;
    watchSku(select.value);
  }

  function watchSku(name) {
    if (skuStream) skuStream.close();
    showSku(skus.get(name));
    skuStream = new EventSource(`/v1/skus/${encodeURIComponent(name)}/events`);
    skuStream.addEventListener("sku", (e) => showSku(JSON.parse(e.data)));
    skuStream.addEventListener("error", () => {
      // EventSource reconnects by itself after a dropped stream; a refused one it gives up on.
      if (skuStream.readyState === EventSource.CLOSED) {
        setTimeout(() => { if ($("sku").value === name) watchSku(name); }, 5000);
      }
    });
  }

  function showSku(s) {
    if (!s) return;
    skus.set(s.sku, s);
    if (s.sku !== $("sku").value) return;
    const meter = $("stock-meter");
    meter.max = Math.max(s.stock, 1);
    meter.value = s.remaining;
    let text = `${s.remaining} of ${s.stock} left · ${money(s.price_cents)}`;
    if (s.reserved) text += ` · ${s.reserved} being paid for`;
    if (s.sold_out) text += " · sold out";
    $("stock-text").textContent = text;
    $("payment-field").hidden = s.payment !== "required";
    $("qty").max = String(Math.min(QTY_MAX, s.max_per_user || QTY_MAX));
    updateBuyButton();
  }

  $("sku").addEventListener("change", (e) => watchSku(e.target.value));

  // -- buying ----------------------------------------------------------------------------

  function updateBuyButton() {
    $("buy-button").disabled = !(token && skus.has($("sku").value));
  }

  function setStatus(status, text, detail = "") {
    const el = $("status");
    el.dataset.status = status;
    // Only a new headline is announced (the element is aria-live): the position ticking down
    // goes to `detail`, which a screen reader reads when asked, not four times a second.
    if (el.textContent !== text) el.textContent = text;
    $("detail").textContent = detail;
  }

  function logLine(text) {
    const li = document.createElement("li");
    const time = document.createElement("time");
    const now = new Date();
    time.dateTime = now.toISOString();
    time.textContent = now.toLocaleTimeString();
    li.append(time, text);
    const log = $("log");
    log.append(li);
    while (log.children.length > LOG_MAX) log.firstElementChild.remove();
  }

  function describe(p) {
    const queue = p.queue;
    switch (p.status) {
      case "pending": {
        if (queue && queue.draw) {
          const left = Math.ceil((Date.parse(queue.draw.closes_at) - Date.now()) / 1000);
          return ["In the draw", left > 0
            ? `In the draw, closes in ${left} s: every buyer in it gets a number at random.`
            : "The draw is closed: the numbers are being drawn."];
        }
        if (!queue || queue.position == null) return ["Pending", "Waiting for the shard to decide."];
        let where = queue.position === 0 ? "You are next" : `${queue.position} ahead of you`;
        if (queue.eta_ms != null) where += `, about ${seconds(queue.eta_ms)}`;
        return ["Pending", where + "."];
      }
      case "reserved":
        return ["Reserved: paying…", `Held for you until ${clock(p.expires_at)}.`];
      case "confirmed":
        return [`Confirmed: ${p.qty} × ${p.sku}`, `Paid ${money(p.amount_cents)}. Purchase ${p.id}.`];
      case "rejected":
        return [`Rejected: ${REASONS[p.reason] || p.reason}`, `Purchase ${p.id}.`];
      case "expired":
      case "cancelled":
        return [`${p.status === "expired" ? "Expired" : "Cancelled"}: ${REASONS[p.reason] || p.reason}`,
          `Purchase ${p.id}.`];
      default:
        return [p.status, ""];
    }
  }

  let lastLogged = null;
  let lastShown = null;

  let drawTimer = null; // re-renders "closes in N s" while a purchase waits for a draw

  function showPurchase(p) {
    let [headline, detail] = describe(p);
    if (p.draw) detail = `Your number was ${p.draw.rank} of ${p.draw.entries} in the draw. ${detail}`;
    setStatus(p.status, headline, detail);
    $("draw").hidden = !p.draw;
    if (p.draw) $("draw-link").href = p.draw.verify;
    clearTimeout(drawTimer);
    const inDraw = p.status === "pending" && p.queue && p.queue.draw;
    if (inDraw) drawTimer = setTimeout(() => { if (lastShown === p) showPurchase(p); }, 1000);
    lastShown = p;
    // The POST's answer and the stream's first event are often the same state: log it once
    // (and the draw's countdown not at every tick).
    const line = detail && p.status === "pending" && !inDraw ? `${headline}: ${detail}` : headline;
    if (line !== lastLogged) logLine(line);
    lastLogged = line;
  }

  async function post(body) {
    // The same Idempotency-Key on every retry: a retried click is the same purchase.
    const key = newKey();
    for (let attempt = 1; ; attempt++) {
      const resp = await fetch("/v1/purchases", {
        method: "POST", body: JSON.stringify(body),
        headers: {"Content-Type": "application/json", Authorization: `Bearer ${token}`, "Idempotency-Key": key},
      });
      const answer = await resp.json();
      if ((resp.status === 503 || resp.status === 429) && attempt < 5) {
        setStatus("pending", "Busy, retrying…");
        await sleep(1000 * (Number(resp.headers.get("Retry-After")) || 1));
        continue;
      }
      return [resp, answer];
    }
  }

  $("buy").addEventListener("submit", async (e) => {
    e.preventDefault();
    if (purchaseStream) purchaseStream.abort();
    $("log").replaceChildren();
    lastLogged = null;
    const sku = skus.get($("sku").value);
    const body = {sku: sku.sku, qty: Number($("qty").value)};
    if (sku.payment === "required") body.payment_token = $("payment").value.trim();
    setStatus("pending", "Sending…");
    let resp, answer;
    try {
      [resp, answer] = await post(body);
    } catch {
      setStatus("error", "Could not reach the server.");
      return;
    }
    if (!resp.ok) {
      const soldOut = String(answer.type || "").endsWith("/sold_out");
      setStatus(soldOut ? "rejected" : "error", soldOut ? "Sold out: no purchase was made" : "Not accepted",
        problemText(answer, resp.status));
      logLine(problemText(answer, resp.status));
      return;
    }
    showPurchase(answer);
    if (!FINAL.has(answer.status)) follow(answer.id);
  });

  async function follow(id) {
    const ctl = new AbortController();
    purchaseStream = ctl;
    try {
      await readEvents(`/v1/purchases/${id}/events`, {Authorization: `Bearer ${token}`}, ctl.signal,
        (name, data) => {
          if (name !== "purchase") return false;
          const p = JSON.parse(data);
          showPurchase(p);
          return FINAL.has(p.status);
        });
    } catch (err) {
      if (!ctl.signal.aborted) setStatus("error", "Lost track of the purchase", err.message);
    }
  }

  // -- Server-Sent Events over fetch -----------------------------------------------------

  // Reads an event stream until onEvent(name, data) returns true or `signal` aborts; resumes
  // with Last-Event-ID after the server ends a stream (sse_max_s) or the network drops it.
  async function readEvents(url, headers, signal, onEvent) {
    let lastId = null;
    let retryMs = 1000;
    while (!signal.aborted) {
      const sent = {Accept: "text/event-stream", ...headers};
      if (lastId !== null) sent["Last-Event-ID"] = lastId;
      let resp;
      try {
        resp = await fetch(url, {headers: sent, signal, cache: "no-store"});
      } catch (err) {
        if (signal.aborted) return;
        await sleep(retryMs);
        continue;
      }
      if (resp.status === 204) return; // we hold the final state already
      if (resp.status === 429 || resp.status === 503) {
        await sleep(1000 * (Number(resp.headers.get("Retry-After")) || 1));
        continue;
      }
      if (!resp.ok) throw new Error(problemText(await resp.json().catch(() => null), resp.status));
      const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      let data = [];
      let name = "message";
      let id = lastId;
      for (;;) {
        let chunk;
        try {
          chunk = await reader.read();
        } catch {
          break; // cut off: resume below
        }
        if (chunk.done) break;
        buffer += chunk.value;
        const lines = buffer.split("\n");
        buffer = lines.pop(); // an unfinished line waits for the next chunk
        for (const raw of lines) {
          const line = raw.endsWith("\r") ? raw.slice(0, -1) : raw;
          if (line === "") { // the blank line ends an event
            lastId = id;
            if (data.length && onEvent(name, data.join("\n"))) {
              reader.cancel().catch(() => {});
              return;
            }
            data = [];
            name = "message";
            continue;
          }
          if (line.startsWith(":")) continue; // a comment: the server's heartbeat
          const colon = line.indexOf(":");
          const field = colon < 0 ? line : line.slice(0, colon);
          let value = colon < 0 ? "" : line.slice(colon + 1);
          if (value.startsWith(" ")) value = value.slice(1);
          if (field === "data") data.push(value);
          else if (field === "event") name = value;
          else if (field === "id") id = value;
          else if (field === "retry" && /^\d+$/.test(value)) retryMs = Number(value);
        }
      }
      if (!signal.aborted) await sleep(retryMs);
    }
  }

  // -- start -----------------------------------------------------------------------------

  $("dev-signin").hidden = !DEV_TOKENS;
  $("paste-signin").hidden = DEV_TOKENS;
  $("qty").max = String(QTY_MAX);
  loadSkus();
})();
