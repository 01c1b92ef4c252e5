"""The durability check reads what the running servers say (/varz), never a file: every server
fsyncing before its acks is `sync_always`; one that does not is `interval`, which a process that
requires fsync refuses to start on; no URL, no answer or an unreadable one is `unverified` (a
line in the log, no refusal); a server without JetStream is an error."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from config.settings import Settings
from flashsale.durability import DurabilityError, check_durability, read_jetstream_config, verify
from flashsale.ports import free_port

MIB = 1 << 20
SYNC_ALWAYS = {"server_name": "n1", "jetstream": {"config": {
    "store_dir": "/data/js", "max_memory": 256 * MIB, "max_storage": 8192 * MIB,
    "sync_interval": 120_000_000_000, "sync_always": True}}}
LAX = {"server_name": "n2", "jetstream": {"config": {
    "store_dir": "/data/js", "max_memory": 256 * MIB, "max_storage": 8192 * MIB,
    "sync_interval": 120_000_000_000}}}  # the server omits sync_always when false
NO_JETSTREAM = {"server_name": "n3"}


def varz_server(body: bytes) -> ThreadingHTTPServer:
    class Varz(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            assert self.path == "/varz"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", free_port()), Varz)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd


@pytest.fixture
def servers() -> Iterator[dict[str, str]]:
    """Monitor URLs of servers answering each kind of /varz."""
    running = {name: varz_server(body) for name, body in {
        "always": json.dumps(SYNC_ALWAYS).encode(), "lax": json.dumps(LAX).encode(),
        "off": json.dumps(NO_JETSTREAM).encode(), "garbage": b"<html>not varz</html>",
    }.items()}
    yield {name: f"http://127.0.0.1:{s.server_address[1]}/" for name, s in running.items()}
    for s in running.values():
        s.shutdown()
        s.server_close()


def test_every_server_fsyncing_is_sync_always(servers):
    found = verify(f"{servers['always']}, {servers['always']}")
    assert found.verdict == "sync_always"
    assert "2 server(s)" in found.message and "8192 MiB" in found.message
    assert found.configs[0].max_memory_bytes == 256 * MIB


def test_one_lax_server_is_interval_and_refused_when_required(servers):
    urls = f"{servers['always']},{servers['lax']}"
    found = verify(urls)
    assert found.verdict == "interval"
    assert servers["lax"] in found.message and "every 120 s" in found.message
    with pytest.raises(DurabilityError):
        check_durability(Settings(nats_monitor_url=urls, require_sync_always=True))
    assert "NOT in effect" in check_durability(Settings(nats_monitor_url=urls, require_sync_always=False))


def test_no_url_no_answer_or_garbage_is_unverified_not_refused(servers):
    assert verify("").verdict == "unverified"
    assert check_durability(Settings(nats_monitor_url="")) == "not verified (no monitor URL)"
    nobody = f"http://127.0.0.1:{free_port()}"
    assert verify(nobody, timeout_s=0.2).verdict == "unverified"
    garbage = verify(servers["garbage"])
    assert garbage.verdict == "unverified" and servers["garbage"] in garbage.message


def test_a_server_without_jetstream_is_an_error(servers):
    with pytest.raises(DurabilityError, match="not enabled"):
        read_jetstream_config(servers["off"])
