"""JSON in and out of the routes: strict request bodies, JSON responses.

Each function either returns what the request says or raises `problems.Rejection`.
"""

from __future__ import annotations

import json
from typing import Any, TypeVar

import msgspec
from aiohttp import web

from ingest import problems
from ingest.edge.process import read_body
from ingest.schemas import encode_json

JSON = "application/json"

T = TypeVar("T")


def json_response(body: object, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=encode_json(body), status=status, content_type=JSON, headers=headers)


async def decode_body(request: web.Request, decoder: msgspec.json.Decoder[T]) -> T:
    """The JSON body, strictly decoded: 415 for another media type, 400 malformed, 422 invalid
    (a key given twice included: which of the two would count is not something to guess),
    408 when it does not arrive within body_timeout_s."""
    check_json(request.content_type)
    return decode_json(await read_body(request), decoder)


def check_json(content_type: str) -> None:
    """A 415 unless the body is declared JSON."""
    if content_type != JSON:
        raise problems.Rejection(
            415, "unsupported_media_type", "Unsupported media type",
            f"send the body as {JSON}",
        )


def decode_json(body: bytes, decoder: msgspec.json.Decoder[T]) -> T:
    """`body`, strictly decoded (see decode_body)."""
    try:
        value = decoder.decode(body)
    except msgspec.ValidationError as exc:
        err = problems.from_msgspec_error(exc)
        raise problems.validation(err.message, [err]) from None
    except msgspec.DecodeError as exc:
        raise problems.Rejection(
            400, "malformed_json", "Malformed JSON", f"body is not valid JSON: {exc}"
        ) from None
    if duplicate := duplicate_key(body, _field_patterns(decoder)):
        raise problems.validation(
            f"key {duplicate!r} given twice", [problems.FieldError(f"$.{duplicate}", "duplicate key")]
        )
    return value


def _field_patterns(decoder: msgspec.json.Decoder[Any]) -> tuple[bytes, ...]:
    patterns = _FIELD_PATTERNS.get(decoder)
    if patterns is None:
        fields = getattr(decoder.type, "__struct_fields__", ())
        patterns = _FIELD_PATTERNS[decoder] = tuple(f'"{f}"'.encode() for f in fields)
    return patterns


_FIELD_PATTERNS: dict[msgspec.json.Decoder[Any], tuple[bytes, ...]] = {}


def duplicate_key(body: bytes, field_patterns: tuple[bytes, ...]) -> str | None:
    """A key that a JSON object in `body` (already decoded once) holds twice, or None.

    The bodies are small objects whose keys are known (unknown keys are refused), so counting
    each quoted field name answers nearly every body in well under a microsecond; only a name
    seen twice (perhaps once as a value) or an escape (a key spelt with \\u) takes the exact,
    slower path."""
    if b"\\u" not in body and all(body.count(p) <= 1 for p in field_patterns):
        return None
    found: list[str] = []

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        keys = [k for k, _ in items]
        if len(set(keys)) != len(keys):
            found.extend(k for k in keys if keys.count(k) > 1)
        return dict(items)

    json.loads(body, object_pairs_hook=pairs)
    return found[0] if found else None
