"""The grammar of every identifier a client names: what may reach a URL path, a log line, a
NATS subject or a Postgres query.

| identifier | pattern | length | where |
|---|---|---|---|
| SKU | `^[A-Za-z0-9][A-Za-z0-9._:-]*$` | 1..64 | paths, purchase bodies, SKU changes, SQL |
| purchase id | `^p_[0-9a-f]{30}$` | 32 | paths, NATS subjects, SQL |
| Idempotency-Key | `^[!-~]+$` (visible ASCII) | 1..255 | header; hashed into the purchase id |
| user id (token `sub`) | `^[!-~]+$` | 1..128 | tokens, bodies, SQL |
| payment token | `^[!-~]+$` | 1..255 | purchase bodies, the PSP |

None of them admits NUL, a control character, a space or non-ASCII text, so nothing a client
names can be refused by Postgres (which takes no NUL in text) or split a subject or a log line.
Ingest checks each at the edge before any lookup; a name outside its grammar is a 4xx, never a
dependency's error. The OpenAPI document states the same patterns (a unit test compares them).

Patterns are JSON Schema (ECMA-262) patterns, as the OpenAPI document holds them: there `$`
ends the string. Python's `$` also matches before a final newline ("sku\\n"), so the checks here
fullmatch the pattern's body instead.
"""

from __future__ import annotations

import re

import msgspec


class Identifier:
    """One identifier's grammar: a pattern and a length range."""

    __slots__ = ("_body", "len_max", "len_min", "name", "pattern")

    def __init__(self, name: str, pattern: str, len_max: int, len_min: int = 1) -> None:
        if not (pattern.startswith("^") and pattern.endswith("$")):
            raise ValueError(f"an identifier pattern is anchored at both ends: {pattern!r}")
        self.name = name
        self.pattern = pattern  # JSON Schema pattern: ^...$
        self.len_min = len_min
        self.len_max = len_max
        self._body = re.compile(pattern[1:-1])

    def matches(self, value: str) -> bool:
        return self.len_min <= len(value) <= self.len_max and self._body.fullmatch(value) is not None

    def meta(self) -> msgspec.Meta:
        """The constraint for a msgspec field (whose `pattern` is a Python re.search)."""
        return msgspec.Meta(min_length=self.len_min, max_length=self.len_max,
                            pattern=self.pattern.removesuffix("$") + r"\Z")

    def describe(self) -> str:
        return f"{self.len_min}..{self.len_max} characters matching {self.pattern}"


PURCHASE_ID_PREFIX = "p_"
VISIBLE_ASCII = r"^[!-~]+$"

SKU = Identifier("SKU", r"^[A-Za-z0-9][A-Za-z0-9._:-]*$", 64)
PURCHASE_ID = Identifier("purchase id", rf"^{PURCHASE_ID_PREFIX}[0-9a-f]{{30}}$", 32, 32)
IDEMPOTENCY_KEY = Identifier("Idempotency-Key", VISIBLE_ASCII, 255)
USER_ID = Identifier("user id", VISIBLE_ASCII, 128)
PAYMENT_TOKEN = Identifier("payment token", VISIBLE_ASCII, 255)
