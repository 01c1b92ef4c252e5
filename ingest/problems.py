"""RFC 9457 problem details: every error ingest answers is `application/problem+json`.

`type` is a stable URI per kind of problem, so clients switch on it rather than on `title`
(which is for humans) or the status code (which several problems share).
"""

from __future__ import annotations

import re
from typing import Any

import msgspec
from aiohttp import web

from flashsale.problem_json import PROBLEM_BASE, PROBLEM_CONTENT_TYPE, FieldError, Problem, encode_problem

__all__ = ["PROBLEM_BASE", "PROBLEM_CONTENT_TYPE", "FieldError", "Problem", "Rejection"]


class Rejection(Exception):
    """A request refused with a problem. Any step of a handler raises it; the admission
    middleware answers it (and counts it by `slug`), so handlers read as a list of steps."""

    def __init__(
        self,
        status: int,
        slug: str,
        title: str,
        detail: str,
        *,
        errors: list[FieldError] | None = None,
        retry_after_s: int | None = None,
        headers: dict[str, str] | None = None,
        instance: str | None = None,
    ) -> None:
        super().__init__(f"{status} {slug}: {detail}")
        self.status = status
        self.slug = slug
        self.title = title
        self.detail = detail
        self.errors = errors
        self.retry_after_s = retry_after_s
        self.headers = headers
        self.instance = instance

    def response(self) -> web.Response:
        body = Problem(
            type=PROBLEM_BASE + self.slug, title=self.title, status=self.status, detail=self.detail,
            instance=self.instance, errors=self.errors, retry_after_s=self.retry_after_s,
        )
        headers: dict[str, Any] = dict(self.headers or {})
        if self.retry_after_s is not None:
            headers["Retry-After"] = str(self.retry_after_s)
        return web.Response(status=self.status, body=encode_problem(body),
                            content_type=PROBLEM_CONTENT_TYPE, headers=headers)


def overloaded(detail: str, retry_after_s: int) -> web.Response:
    return Rejection(503, "overloaded", "Service overloaded", detail, retry_after_s=retry_after_s).response()


def not_found(detail: str) -> Rejection:
    return Rejection(404, "not_found", "Not found", detail)


def validation(detail: str, errors: list[FieldError]) -> Rejection:
    return Rejection(422, "validation", "Invalid request", detail, errors=errors)


def bad_query(detail: str) -> Rejection:
    return Rejection(400, "bad_query", "Invalid query", detail)


# msgspec ends a message with the path it refers to, made of the Struct's own field names.
_AT_PATH = re.compile(r" - at `(\$[A-Za-z0-9_.\[\]]*)`\Z")
# Messages in which msgspec quotes what the client sent: an answer never carries those bytes.
_QUOTING = {"Object contains unknown field": "Object contains an unknown field",
            "Invalid enum value": "Invalid enum value (not one of the documented values)"}


def from_msgspec_error(exc: msgspec.ValidationError) -> FieldError:
    """msgspec reports "Expected `int`, got `str` - at `$.qty`"; split the path out for clients."""
    text = str(exc)
    at = _AT_PATH.search(text)
    message, path = (text[:at.start()], at.group(1)) if at else (text, "$")
    for quoting, said in _QUOTING.items():
        if message.startswith(quoting):
            message = said
    # A pattern as the OpenAPI document states it: proto.identifiers ends Python's with \Z,
    # which msgspec shows as its repr (two backslashes).
    message = message.replace("\\\\Z'", "$'")
    return FieldError(path=path, message=message)
