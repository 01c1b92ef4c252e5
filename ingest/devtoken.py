"""`POST /dev/token {"user": "alice"}`: a buyer token for the sale page of a development stack.

It signs a token for anyone who asks, so it exists only where `dev_token_endpoint` is true
(config/dev.toml, never the default) and answers only callers on the loopback interface, who
named a loopback host (`localhost`, 127.0.0.0/8, ::1) or one of `dev_token_hosts` in `Host`.
The second check is for DNS rebinding: a web page whose name now resolves to 127.0.0.1 is
same-origin with this helper in the visitor's browser, and only its `Host` gives it away. A
production page has no such helper: the buyer's token comes from the shop's identity provider.
"""

from __future__ import annotations

import ipaddress

import msgspec
from aiohttp import web

from config.errors import ConfigError
from config.settings import Settings
from ingest import bodies, problems
from ingest.auth import DEV_TOKEN_TTL_S, dev_tokens
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


def host_name(host: str) -> str:
    """The name in a `Host` header value, without its port, lower case (RFC 9110 7.2)."""
    if host.startswith("["):  # an IPv6 literal: [::1]:8080
        return host[1:].partition("]")[0].lower()
    name, colon, port = host.rpartition(":")
    return (name if colon and port.isdigit() else host).lower().rstrip(".")


def is_dev_host(host: str | None, extra_names: list[str]) -> bool:
    """Whether a `Host` header names this machine's loopback (or a configured dev name)."""
    if not host:
        return False
    name = host_name(host)
    return name == "localhost" or _is_loopback(name) or name in (n.lower() for n in extra_names)


async def dev_token(request: web.Request) -> web.Response:
    if not _is_loopback(request.remote):
        raise problems.Rejection(
            403, "forbidden", "Forbidden", "the development token helper answers loopback callers only"
        )
    settings = request.app[STATE].settings
    if not is_dev_host(request.headers.get("Host"), settings.dev_token_hosts):
        raise problems.Rejection(
            403, "forbidden", "Forbidden",
            "the development token helper answers requests for localhost, a loopback address or "
            "one of dev_token_hosts only",
        )
    req = await bodies.decode_body(request, token_request_decoder)
    token = dev_tokens(settings, [req.user])[0]
    return bodies.json_response(TokenView(token=token, user=req.user, expires_in_s=DEV_TOKEN_TTL_S))
