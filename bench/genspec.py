"""What one load generator process is asked to do (`GenSpec`, JSON on its command line) and what
it reports (`GenResult`, msgpack in its output file): the harness's contract with
`python -m bench.loadgen`."""

from __future__ import annotations

from typing import Literal

import msgspec

Mode = Literal["open", "closed", "retry"]


class GenSpec(msgspec.Struct, kw_only=True):
    host: str = "127.0.0.1"
    port: int
    mode: Mode
    duration_s: float
    start_at: float  # epoch seconds: every process of a phase starts at the same instant
    tag: str  # user-id prefix, unique per process and phase: one buyer per logical purchase
    skus: list[str]
    rate: float = 0.0  # open loop, requests/s for this process
    concurrency: int = 64  # closed/retry: connections; open: most connections in flight
    wait_every: int = 0  # every Nth request carries `Prefer: wait=wait_s` (0 = none)
    wait_s: int = 5
    # Every Nth request without Prefer: wait is followed through its event stream
    # (GET /v1/purchases/{id}/events) to its decision, as a buyer's app would (0 = none).
    stream_every: int = 0
    timeout_s: float = 10.0  # per request; past this it counts as an error (open/closed)
    retry_timeout_s: float = 0.05  # retry mode: the impatient buyer's timeout
    retry_attempts: int = 5
    resend_every: int = 0  # retry mode: every Nth purchase is sent once more after its answer
    payment_tokens: list[str] = []  # request n carries payment_token tokens[n % len] (paid scenario)
    tokens_file: str = ""  # buyer tokens, one per line (bench.buyers.write_tokens)
    # False: request n is buyer n's only click (key k<n>); past the file's end, requests repeat
    # earlier clicks (same buyer, same key: a retry). True: buyers are reused round-robin, each
    # request with its own key (repeated buyers: their tokens are verified once, then cached).
    repeat_buyers: bool = False


class GenResult(msgspec.Struct):
    sent: int = 0
    accept_ms: list[float] = []  # POST -> 2xx, for requests without Prefer: wait
    decision_ms: list[float] = []  # POST -> decided state in the answer
    stream_decision_ms: list[float] = []  # POST -> decided state on the purchase's event stream
    undecided: int = 0  # Prefer: wait requests still pending when answered
    statuses: dict[str, int] = {}
    errors: dict[str, int] = {}
    accepted_ids: list[str] = []
    answered: int = 0  # 2xx + 409 sold out: definitive answers
    per_second: list[int] = []  # definitive answers (2xx + 409) per second since start
    lag_ms: list[float] = []  # how late requests went out vs their intended time (open loop)
    cpu_s: float = 0.0
    wall_s: float = 0.0
    # retry mode
    logical: int = 0
    retries: int = 0
    gave_up: int = 0
    id_mismatch: int = 0  # one key answered with two different ids: a duplicate
    clicks_repeated: int = 0  # requests past the token file's end (sent as retries of earlier clicks)
