"""Who is calling: buyers by a JWT from the shop's identity provider, operators by the admin token.

A buyer's id is the verified token's `sub`, never a field of the body. Tokens are checked for
signature, `exp`, `nbf`, `iss` and `aud` against configured keys: HS256 shared secrets for
development (several at once, for rotation) and the public keys of a JWKS file (RS256, ES256,
EdDSA) for production. Verified tokens are remembered until they expire (at most
VERIFIED_TOKENS_MAX, the least recently used forgotten first), so a buyer polling with the same
token pays for the signature check once; the secrets are fixed for the life of the process, so
a remembered token is one they still verify.
"""

from __future__ import annotations

import binascii
import hashlib
import hmac
import json
import re
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

import jwt
import msgspec
from aiohttp import web

from config.errors import ConfigError
from config.settings import HS256_SECRET_MIN_BYTES, Settings
from ingest import problems
from ingest.ratelimit import RateLimiter
from proto.identifiers import USER_ID

HS_ALGORITHMS = ["HS256"]
PUBLIC_KEY_ALGORITHMS = ["RS256", "ES256", "EdDSA"]
VERIFIED_TOKENS_MAX = 100_000
TOKEN_LEN_MAX = 4096
HEADERS_MAX = 64  # distinct token headers remembered (alg, typ, kid: a handful per issuer)
DEV_TOKEN_TTL_S = 3600
ADMIN_TOKEN_MIN_BYTES = 32
ADMIN_CLIENTS_MAX = 10_000  # addresses whose failures are remembered (the quietest forgotten)
_REQUIRED_CLAIMS = ["exp", "sub", "iss", "aud"]


def _unauthorized(detail: str) -> problems.Rejection:
    return problems.Rejection(
        401, "unauthorized", "Unauthorized", detail,
        headers={"WWW-Authenticate": 'Bearer realm="flashsale", error="invalid_token"'},
    )


def bearer_token(request: web.Request) -> str | None:
    """The request's bearer token (`bearer_token_of` its Authorization headers)."""
    return bearer_token_of(request.headers.getall("Authorization", []))


def bearer_token_of(given: list[str]) -> str | None:
    """The bearer token of a request's Authorization headers. Two headers are none: which one a
    proxy or a log looked at is not something to guess."""
    if len(given) != 1:
        return None
    scheme, _, token = given[0].partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


class BuyerVerifier:
    def __init__(
        self,
        hs256_secrets: list[str],
        public_keys: dict[str | None, jwt.PyJWK],
        issuer: str,
        audience: str,
        leeway_s: float,
    ) -> None:
        if not hs256_secrets and not public_keys:
            raise ConfigError("no JWT keys: set jwt_hs256_secrets or jwt_jwks_file")
        if not issuer or not audience:
            raise ConfigError("jwt_issuer and jwt_audience must be set")
        if any(len(s.encode()) < HS256_SECRET_MIN_BYTES for s in hs256_secrets):
            raise ConfigError(f"every jwt_hs256_secrets entry needs >= {HS256_SECRET_MIN_BYTES} bytes")
        self.hs256_secrets = hs256_secrets
        # Each secret's HMAC keyed once (its padded key hashed in): a token's check copies it.
        self._hs256_macs = [hmac.new(s.encode(), digestmod=hashlib.sha256) for s in hs256_secrets]
        self._headers: dict[str, dict[str, Any]] = {}  # header segment -> parsed header
        self.public_keys = public_keys
        self.issuer = issuer
        self.audience = audience
        self.leeway_s = leeway_s
        # token -> (sub, exp), least recently used first, at most VERIFIED_TOKENS_MAX tokens.
        self._verified: OrderedDict[str, tuple[str, float]] = OrderedDict()

    @classmethod
    def from_settings(cls, settings: Settings) -> BuyerVerifier:
        keys: dict[str | None, jwt.PyJWK] = {}
        if settings.jwt_jwks_file:
            jwks = json.loads(Path(settings.jwt_jwks_file).read_text())
            for key in jwt.PyJWKSet.from_dict(jwks).keys:
                keys[key.key_id] = key
        return cls(settings.jwt_hs256_secrets, keys, settings.jwt_issuer, settings.jwt_audience,
                   settings.jwt_leeway_s)

    def buyer(self, request: web.Request) -> str:
        """The verified buyer id (`sub`) of the request, or a 401 problem."""
        return self.buyer_of(request.headers.getall("Authorization", []))

    def buyer_of(self, authorization: list[str]) -> str:
        """The verified buyer id (`sub`) of a request's Authorization headers, or a 401 problem."""
        token = bearer_token_of(authorization)
        if token is None:
            raise _unauthorized("send Authorization: Bearer <token from your identity provider>")
        return self.subject(token, time.time())

    def subject(self, token: str, now_s: float) -> str:
        known = self._verified.get(token)
        if known is not None and known[1] + self.leeway_s > now_s:
            self._verified.move_to_end(token)  # a buyer polling with it keeps it remembered
            return known[0]
        if len(token) > TOKEN_LEN_MAX:
            raise _unauthorized("token too long")
        claims = self._verify(token)
        sub = claims["sub"]
        if not isinstance(sub, str) or not USER_ID.matches(sub):
            raise _unauthorized(f"sub must be {USER_ID.describe()}")
        self._verified[token] = (sub, float(claims["exp"]))
        if len(self._verified) > VERIFIED_TOKENS_MAX:
            self._verified.popitem(last=False)
        return sub

    def _verify(self, token: str) -> dict[str, Any]:
        header = self._header(token)
        alg = header.get("alg")
        try:
            if alg in HS_ALGORITHMS and self.hs256_secrets:
                claims = self._verify_hs256(token, header)
            elif alg in PUBLIC_KEY_ALGORITHMS and self.public_keys:
                claims = self._verify_public(token, header.get("kid"), alg)
            else:
                named = alg if alg in HS_ALGORITHMS or alg in PUBLIC_KEY_ALGORITHMS else "that algorithm"
                raise _unauthorized(f"tokens signed with {named} are not accepted")
        except jwt.InvalidTokenError as exc:
            raise _unauthorized(f"invalid token: {exc}") from None
        # Only the headers of tokens that verified are remembered: junk cannot fill the table.
        segment = token.partition(".")[0]
        if segment not in self._headers and len(self._headers) < HEADERS_MAX:
            self._headers[segment] = header
        return claims

    def _header(self, token: str) -> dict[str, Any]:
        """The token's JOSE header. An issuer signs every token with the same few headers, so
        they are parsed once each (bounded), not once per token."""
        segment, dot, _ = token.partition(".")
        if not dot or token.count(".") != 2:
            raise _unauthorized("malformed token")
        header = self._headers.get(segment)
        if header is not None:
            return header
        try:
            parsed = json.loads(b64url_decode(segment))
        except (jwt.DecodeError, ValueError, UnicodeDecodeError):
            raise _unauthorized("malformed token") from None
        if not isinstance(parsed, dict):
            raise _unauthorized("malformed token")
        return parsed

    def _decode(self, token: str, key: Any, algorithm: str) -> dict[str, Any]:
        claims: dict[str, Any] = jwt.decode(
            token, key, algorithms=[algorithm], audience=self.audience, issuer=self.issuer,
            leeway=self.leeway_s, options={"require": _REQUIRED_CLAIMS},
        )
        return claims

    def _verify_hs256(self, token: str, header: dict[str, Any]) -> dict[str, Any]:
        """HS256 without PyJWT's generic machinery, which costs ~40 us a token where this costs
        ~4 (measured): a buyer's first request pays it, and a flood is all first requests. The
        same checks: the signature over the token's own text with each configured secret (so a
        changed byte anywhere fails), then exp/nbf with leeway, iss and aud."""
        if "crit" in header:
            raise jwt.InvalidTokenError("critical header extensions are not understood")
        signing_input, _, signature = token.rpartition(".")  # three parts: _header checked
        given = b64url_decode(signature)
        signed = signing_input.encode()
        # Rotation: every configured secret (the newest first), until their tokens expired.
        for keyed in self._hs256_macs:
            mac = keyed.copy()
            mac.update(signed)
            if hmac.compare_digest(mac.digest(), given):
                break
        else:
            raise jwt.InvalidSignatureError("Signature verification failed")
        payload = signing_input.partition(".")[2]
        try:
            claims = _claims_decoder.decode(b64url_decode(payload))
        except msgspec.DecodeError as exc:
            raise jwt.InvalidTokenError(f"claims: {exc}") from None
        now_s = time.time()
        if claims.exp + self.leeway_s <= now_s:
            raise jwt.ExpiredSignatureError("Signature has expired")
        if claims.nbf is not None and claims.nbf - self.leeway_s > now_s:
            raise jwt.ImmatureSignatureError("The token is not yet valid (nbf)")
        if claims.iss != self.issuer:
            raise jwt.InvalidIssuerError("Invalid issuer")
        audiences = [claims.aud] if isinstance(claims.aud, str) else claims.aud
        if self.audience not in audiences:
            raise jwt.InvalidAudienceError("Audience doesn't match")
        return {"sub": claims.sub, "exp": claims.exp}

    def _verify_public(self, token: str, kid: str | None, alg: str) -> dict[str, Any]:
        if kid is None and len(self.public_keys) == 1:  # a provider with one key may omit kid
            key: jwt.PyJWK | None = next(iter(self.public_keys.values()))
        else:
            key = self.public_keys.get(kid)
        if key is None:
            raise jwt.InvalidTokenError("unknown key id (kid)")
        if key.algorithm_name != alg:
            raise jwt.InvalidTokenError(f"the key named by kid is for {key.algorithm_name}, not {alg}")
        for segment in token.split("."):  # PyJWT's own decoding is lenient
            b64url_decode(segment)
        return self._decode(token, key.key, alg)


class _Claims(msgspec.Struct):
    """The registered claims a buyer token must carry (others are ignored)."""

    sub: str
    exp: float
    iss: str
    aud: str | list[str]
    nbf: float | None = None
    iat: float | None = None


_claims_decoder = msgspec.json.Decoder(_Claims)


_B64URL_RE = re.compile(r"[A-Za-z0-9_-]*")
_B64URL_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
# The last character of an unpadded segment carries 2 (length % 4 == 2) or 4 (== 3) data bits
# and 4 or 2 bits that must be zero: only these characters end a canonical segment.
_CANONICAL_LAST = {
    2: frozenset(_B64URL_ALPHABET[::16]),
    3: frozenset(_B64URL_ALPHABET[::4]),
}
_URLSAFE_TO_STANDARD = bytes.maketrans(b"-_", b"+/")
_PADDING = {0: b"", 2: b"==", 3: b"="}  # by length % 4 (1 is no encoding at all)


def b64url_decode(part: str) -> bytes:
    """A JWS segment, decoded strictly (RFC 7515 2 and appendix C): the base64url alphabet only,
    no padding, no length that no byte string encodes to, and zero unused bits in the last
    character, so one byte string has exactly one spelling. A lenient decoder accepts many
    spellings of one signature, and a token cache or a deny-list keyed by text then sees
    different tokens where there is one."""
    if not _B64URL_RE.fullmatch(part):
        raise jwt.DecodeError("invalid base64url: only A-Z a-z 0-9 - _ and no padding")
    rest = len(part) % 4
    if rest == 1 or (rest and part[-1] not in _CANONICAL_LAST[rest]):
        raise jwt.DecodeError("invalid base64url: not the canonical encoding")
    try:
        # The alphabet is checked above: the URL-safe letters as the standard ones, then C.
        return binascii.a2b_base64(part.encode().translate(_URLSAFE_TO_STANDARD) + _PADDING[rest])
    except (ValueError, binascii.Error):
        raise jwt.DecodeError("invalid base64url") from None


def dev_tokens(settings: Settings, subjects: list[str], ttl_s: int = DEV_TOKEN_TTL_S) -> list[str]:
    """HS256 tokens that a stack configured with `settings` accepts (development and tests)."""
    if not settings.jwt_hs256_secrets:
        raise ConfigError("no jwt_hs256_secrets configured: tokens come from your identity provider")
    for sub in subjects:
        if not USER_ID.matches(sub):  # ingest would refuse the token: never sign one
            raise ConfigError(f"a user id is {USER_ID.describe()}, not {sub!r}")
    if ttl_s <= 0:
        raise ConfigError(f"--ttl-s must be above 0, not {ttl_s}")
    secret = settings.jwt_hs256_secrets[0]
    now_s = int(time.time())
    base = {"iss": settings.jwt_issuer, "aud": settings.jwt_audience, "iat": now_s, "nbf": now_s,
            "exp": now_s + ttl_s}
    return [jwt.encode({**base, "sub": sub}, secret, algorithm="HS256") for sub in subjects]


def looks_like_jwt(token: str) -> bool:
    """Three dot-separated parts: a buyer's token. Anything else can only be an admin token."""
    return token.count(".") == 2


class AdminGate:
    """The admin token, on every route that accepts it, and the failed attempts at it per client
    address: `admin_failures_burst` at once, then `admin_failures_per_s` (settings);
    beyond that an address is refused (429) even with the right token, so its answers tell
    nothing. With a token of at least `ADMIN_TOKEN_MIN_BYTES` random bytes, a guess per second
    per address gets nowhere. (It cannot be hidden whether a guess was right: the right token
    reads any purchase, the attacker's own included.)"""

    def __init__(self, admin_token: str, failures: RateLimiter) -> None:
        if admin_token and len(admin_token.encode()) < ADMIN_TOKEN_MIN_BYTES:
            raise ConfigError(f"admin_token needs >= {ADMIN_TOKEN_MIN_BYTES} bytes (or none at all)")
        if looks_like_jwt(admin_token):
            raise ConfigError("admin_token must not hold two dots: that is the shape of a buyer's JWT")
        self._token = admin_token.encode()
        self.failures = failures

    @classmethod
    def from_settings(cls, settings: Settings) -> AdminGate:
        failures = RateLimiter(settings.admin_failures_per_s, settings.admin_failures_burst,
                               ADMIN_CLIENTS_MAX)
        return cls(settings.admin_token, failures)

    def attempt(self, client: str, token: str | None, now_s: float) -> bool:
        """Whether `token` is the admin token; a miss (no token included) is charged to
        `client`. Raises a 429 problem while `client` has no attempts left."""
        if wait_s := self.failures.wait_s(client, now_s):
            raise problems.Rejection(
                429, "admin_throttled", "Too many failed attempts",
                "too many failed admin attempts from this address",
                retry_after_s=RateLimiter.retry_after_s(wait_s),
            )
        if self._token and token is not None and hmac.compare_digest(token.encode(), self._token):
            return True
        self.failures.acquire(client, now_s)
        return False
