"""The end of `flashsale dev`'s start, against fake ingests: "ready" only once every ingest
process says so, the demo sale loaded only then, and a sale that cannot be loaded said in one
line, not raised."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from config.settings import load
from flashsale.ports import free_port
from launch import demo
from launch.demo import DEMO_SALE, load_demo, try_it


class Ready(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/readyz" else 404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *_: object) -> None:
        pass


@pytest.fixture
def ingest_port() -> Iterator[int]:
    httpd = ThreadingHTTPServer(("127.0.0.1", free_port()), Ready)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield httpd.server_address[1]
    httpd.shutdown()
    httpd.server_close()


def test_ready_says_where_the_page_is_and_how_to_buy():
    said = try_it("http://127.0.0.1:8080")
    assert said.startswith("flashsale: ready: the sale page is http://127.0.0.1:8080/ ;")
    assert "curl -si -X POST http://127.0.0.1:8080/v1/purchases" in said and "Idempotency-Key" in said


def readyz(port: int) -> str:
    return f"http://127.0.0.1:{port}/readyz"


def test_not_ready_while_ingest_is_not(monkeypatch, capsys):
    monkeypatch.setattr(demo, "INGEST_READY_WAIT_S", 0.1)
    port = free_port()
    load_demo(load(env={}, file=None, ingest_host="127.0.0.1", ingest_port=port), DEMO_SALE,
              {"ingest_port": readyz(port)})
    assert capsys.readouterr().out == (f"flashsale: ingest not ready: ingest_port ({readyz(port)}); "
                                       "demo sale not loaded. Not ready.\n")


def test_not_ready_until_every_ingest_process_is(ingest_port, monkeypatch, capsys):
    """The public port answers for whichever process the kernel picks: each one's own status
    port must say ready too."""
    monkeypatch.setattr(demo, "INGEST_READY_WAIT_S", 0.1)
    silent = free_port()
    settings = load(env={}, file=None, ingest_host="127.0.0.1", ingest_port=ingest_port)
    load_demo(settings, None, {"ingest_port": readyz(ingest_port), "ingest": readyz(ingest_port),
                               "ingest-2": readyz(silent)})
    assert capsys.readouterr().out == (f"flashsale: ingest not ready: ingest-2 ({readyz(silent)}); "
                                       "demo sale not loaded. Not ready.\n")


def test_ready_without_a_sale_once_ingest_is(ingest_port, capsys):
    load_demo(load(env={}, file=None, ingest_host="127.0.0.1", ingest_port=ingest_port), None,
              {"ingest_port": readyz(ingest_port), "ingest": readyz(ingest_port)})
    assert capsys.readouterr().out == f"flashsale: ready: http://127.0.0.1:{ingest_port}/\n"


def test_a_sale_that_cannot_be_loaded_is_one_line_and_no_ready(ingest_port, capsys):
    nowhere = f"postgresql://flashsale:pw@127.0.0.1:{free_port()}/flashsale"
    settings = load(env={}, file=None, ingest_host="127.0.0.1", ingest_port=ingest_port, database_url=nowhere)
    load_demo(settings, DEMO_SALE, {"ingest_port": readyz(ingest_port)})
    [line] = capsys.readouterr().out.splitlines()
    assert line.startswith("flashsale: demo sale not loaded: ")
