"""The edge: how much of one ingest process a single client (an IP address) or buyer may hold,
and the file-descriptor budget every cap is sized from.

- `limits`: at start the soft RLIMIT_NOFILE is raised to the hard one, and `size_limits` derives
  every cap from the result, keeping headroom for NATS, Postgres, logs and accepts in flight;
- `protocol.GuardedProtocol` sits in front of aiohttp's protocol and closes a connection at once
  (an RST: no request is parsed, nothing is answered) when the process or that peer already
  holds its cap of connections (`connections.ConnectionGuard`); behind it, every request head
  of the connection is held to `head_max_bytes` (431) and HTTP/1.x as every port's are
  (flashsale.head_guard.HeadGuard);
- `refusals`: every refusal counted in `flashsale_ingest_edge_refusals_total{reason}` and logged
  at most once per client per interval; `BadRequestLog` turns aiohttp's traceback for a request
  it cannot parse into such a refusal;
- aiohttp's `keepalive_timeout` (`idle_timeout_s`) closes a connection idle between requests and
  one whose request head is not complete that long after it opened (the slow-head attack);
  `process.read_body` gives the body its own deadline (`body_timeout_s`, 408);
- `waits.WaitBudget` caps the long-polls and event streams one client IP and one buyer hold
  (429), below the process's `waits_max` (beyond which requests are answered without waiting,
  see results.ResultsHub) and `sku_streams_max` (see events.sku_feeds.Streams);
- `process.client_step`, a step of the admission middleware, finds the client (`clients`: the
  peer, or X-Forwarded-For from `trusted_proxies` only) and applies the per-client request rate
  (429); a client that keeps asking through its 429s has its connections reset for a while
  (`flooding`).
"""
