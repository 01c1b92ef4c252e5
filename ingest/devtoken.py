"""`POST /dev/token {"user": "alice"}`: a buyer token for the sale page of a development stack.

It signs a token for anyone who asks, so it exists only where `dev_token_endpoint` is true
(config/dev.toml, never the default) and answers only callers on the loopback interface. A
production page has no such helper: the buyer's token comes from the shop's identity provider.
"""

from __future__ import annotations

import ipaddress

import msgspec
from aiohttp import web

from config.settings import Settings
from ingest import http, problems
from ingest.auth import DEV_TOKEN_TTL_S, ConfigError, dev_tokens
from ingest.schemas import UserId
from ingest.state import STATE


class TokenRequest(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    user: UserId


class TokenView(msgspec.Struct):
    token: str
    user: str
    expires_in_s: int


token_request_decoder = msgspec.json.Decoder(TokenRequest)


def setup(app: web.Application, settings: Settings) -> None:
    if not settings.dev_token_endpoint:
        return
    if not settings.jwt_hs256_secrets:
        raise ConfigError("dev_token_endpoint needs jwt_hs256_secrets to sign with")
    app.router.add_post("/dev/token", dev_token)


def _is_loopback(address: str | None) -> bool:
    try:
        return address is not None and ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


async def dev_token(request: web.Request) -> web.Response:
    if not _is_loopback(request.remote):
        raise problems.Rejection(
            403, "forbidden", "Forbidden", "the development token helper answers loopback callers only"
        )
    req = await http.decode_body(request, token_request_decoder)
    token = dev_tokens(request.app[STATE].settings, [req.user])[0]
    return http.json_response(TokenView(token=token, user=req.user, expires_in_s=DEV_TOKEN_TTL_S))
