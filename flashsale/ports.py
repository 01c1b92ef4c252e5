"""Loopback ports: a free one to bind (tests, the bench, local clusters), and whether something
answers on one (a TCP connect, or an HTTP GET that must say 200)."""

from __future__ import annotations

import http.client
import random
import socket
import subprocess
import time
import urllib.request
from collections import deque
from collections.abc import Callable
from typing import Literal

# Below the kernel's ephemeral range (32768+), so no outgoing connection takes a port between
# choosing it and the server binding it.
_PORT_RANGE = (20000, 32000)
# A port handed out is bindable until its server starts, so a second call could return it again
# (CI met an ingest whose API and metrics ports were the same); this process hands none out twice.
_HANDED_OUT_MAX = 2000
_handed_out: deque[int] = deque(maxlen=_HANDED_OUT_MAX)
FREE_PORT_TRIES = 200  # random draws before free_port_block gives up

PORT_PROBE_TIMEOUT_S = 0.5  # one TCP connect to a loopback port
PORT_POLL_INTERVAL_S = 0.05  # between two connects to a port nothing listens on yet
HTTP_PROBE_TIMEOUT_S = 1.0  # one GET of a health or readiness URL
HTTP_POLL_INTERVAL_S = 0.05  # between two GETs of a URL that is not answering 200 yet
# How a wait for an HTTP 200 ended: answered, the process behind it gone, or out of time.
HttpWait = Literal["ok", "exited", "timeout"]


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    return free_port_block(1)


def free_port_block(n: int) -> int:
    """A base port such that base .. base+n-1 are free now (e.g. one status port per shard)."""
    for _ in range(FREE_PORT_TRIES):
        base = random.randrange(_PORT_RANGE[0], _PORT_RANGE[1] - n)
        block = range(base, base + n)
        if all(p not in _handed_out and _bindable(p) for p in block):
            _handed_out.extend(block)
            return base
    raise RuntimeError(f"no block of {n} free ports")


def port_open(port: int, timeout_s: float = PORT_PROBE_TIMEOUT_S) -> bool:
    """Whether something accepts connections on 127.0.0.1:port now."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout_s):
            return True
    except OSError:
        return False


def wait_for_port(port: int, timeout_s: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        if port_open(port, timeout_s=0.2):
            return
        time.sleep(PORT_POLL_INTERVAL_S)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout_s}s")


def http_ok(url: str) -> bool:
    """One GET: True if `url` answered 200; False for any other status, a refused or cut
    connection or no answer within HTTP_PROBE_TIMEOUT_S."""
    try:
        with urllib.request.urlopen(url, timeout=HTTP_PROBE_TIMEOUT_S) as resp:
            return bool(resp.status == 200)
    except (OSError, http.client.HTTPException):  # URLError and HTTPError are OSErrors
        return False


def wait_http_ok(url: str, timeout_s: float, alive: Callable[[], bool] = lambda: True) -> HttpWait:
    """Poll `url` until it answers 200, `alive()` turns false or `timeout_s` passed (each caller
    says in its own words which it was)."""
    deadline = time.monotonic() + timeout_s
    while True:
        if http_ok(url):
            return "ok"
        if not alive():
            return "exited"
        if time.monotonic() >= deadline:
            return "timeout"
        time.sleep(HTTP_POLL_INTERVAL_S)
