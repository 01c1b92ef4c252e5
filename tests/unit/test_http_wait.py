"""Waiting for a server's health or readiness URL: done at its first 200, never on another
status or a refused connection; a process that exits ends the wait at once, and a server that
never says 200 ends it at the timeout."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pytest

from flashsale.ports import free_port, http_ok, wait_http_ok


class Scripted(BaseHTTPRequestHandler):
    """Answers each GET with the next status of `statuses` (the last one from then on)."""

    statuses: ClassVar[list[int]] = []

    def do_GET(self) -> None:
        status = self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *_: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[tuple[str, type[Scripted]]]:
    handler = type("Handler", (Scripted,), {"statuses": [200]})
    httpd = ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/readyz", handler
    httpd.shutdown()
    httpd.server_close()


def test_only_a_200_is_ok(server):
    url, handler = server
    handler.statuses = [503, 204, 200]
    assert [http_ok(url), http_ok(url), http_ok(url)] == [False, False, True]
    assert not http_ok(f"http://127.0.0.1:{free_port()}/")  # nothing listening


def test_the_wait_ends_at_the_first_200(server):
    url, handler = server
    handler.statuses = [503, 503, 503, 200]
    assert wait_http_ok(url, timeout_s=30) == "ok"
    assert handler.statuses == [200]


def test_an_exited_process_ends_the_wait_at_once(server):
    url, handler = server
    handler.statuses = [503]
    assert wait_http_ok(url, timeout_s=30, alive=lambda: False) == "exited"


def test_a_server_that_never_says_200_times_out(server):
    url, handler = server
    handler.statuses = [503]
    assert wait_http_ok(url, timeout_s=0.2) == "timeout"
    assert wait_http_ok(url, timeout_s=0) == "timeout"  # no time left: one look, then out
