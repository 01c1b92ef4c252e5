"""Buyer tokens: what BuyerVerifier accepts and what it refuses (signature, claims, algorithms)."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from config.errors import ConfigError
from config.settings import load
from ingest.auth import AdminGate, BuyerVerifier, b64url_decode, dev_tokens
from ingest.problems import Rejection
from ingest.ratelimit import RateLimiter
from proto.ids import id_key, purchase_id

ISS, AUD = "https://id.shop.example", "flashsale"
S1, NEW, OLD, RETIRED = ("secret-one-of-at-least-32-bytes!", "the-newest-secret-32-bytes-long!",
                         "the-older-secret-32-bytes-long!!", "a-retired-secret-32-bytes-long!!")


def claims(**over: object) -> dict[str, object]:
    now_s = int(time.time())
    base: dict[str, object] = {"sub": "alice", "iss": ISS, "aud": AUD, "iat": now_s,
                               "nbf": now_s, "exp": now_s + 600}
    base.update(over)
    return {k: v for k, v in base.items() if v is not None}


def verifier(*secrets: str, keys: dict[str | None, jwt.PyJWK] | None = None) -> BuyerVerifier:
    return BuyerVerifier(list(secrets), keys or {}, ISS, AUD, leeway_s=5)


def refused(v: BuyerVerifier, token: str) -> str:
    with pytest.raises(Rejection) as exc:
        v.subject(token, time.time())
    assert exc.value.status == 401 and exc.value.headers and "WWW-Authenticate" in exc.value.headers
    return exc.value.detail


def test_a_valid_token_names_its_buyer():
    assert verifier(S1).subject(jwt.encode(claims(), S1, "HS256"), time.time()) == "alice"


@pytest.mark.parametrize(("name", "over"), [
    ("expired", lambda now_s: {"exp": now_s - 60}),
    ("not yet valid", lambda now_s: {"nbf": now_s + 60}),
    ("wrong audience", lambda now_s: {"aud": "someone-else"}),
    ("wrong issuer", lambda now_s: {"iss": "https://evil.example"}),
    ("no exp", lambda now_s: {"exp": None}),
    ("no sub", lambda now_s: {"sub": None}),
    ("empty sub", lambda now_s: {"sub": ""}),
])
def test_bad_claims_are_refused(name: str, over: Callable[[int], dict[str, object]]):
    # Times are made when the test runs, not when it is collected.
    payload = claims(**over(int(time.time())))
    refused(verifier(S1), jwt.encode(payload, S1, "HS256"))


def test_wrong_key_alg_none_and_tampering_are_refused():
    v = verifier(S1)
    refused(v, jwt.encode(claims(), "not-the-secret-but-as-long-as-the-real-one", "HS256"))
    unsigned = jwt.encode(claims(), None, algorithm="none")  # type: ignore[arg-type]
    assert "not accepted" in refused(v, unsigned)
    header, _, signature = jwt.encode(claims(), S1, "HS256").split(".")
    forged = base64.urlsafe_b64encode(json.dumps(claims(sub="mallory")).encode()).rstrip(b"=").decode()
    refused(v, f"{header}.{forged}.{signature}")
    refused(v, "not.a.jwt")
    refused(v, "x" * 5000)


def test_rotation_accepts_every_configured_secret():
    v = verifier(NEW, OLD)
    assert v.subject(jwt.encode(claims(sub="a"), NEW, "HS256"), time.time()) == "a"
    assert v.subject(jwt.encode(claims(sub="b"), OLD, "HS256"), time.time()) == "b"
    refused(v, jwt.encode(claims(), RETIRED, "HS256"))


def test_a_verified_token_is_remembered_until_it_expires():
    v = verifier(S1)
    token = jwt.encode(claims(exp=int(time.time()) + 10), S1, "HS256")
    assert v.subject(token, time.time()) == "alice"
    v._hs256_macs = verifier(RETIRED)._hs256_macs  # from now on only a remembered token passes
    assert v.subject(token, time.time() + 12) == "alice"  # within leeway of its exp
    with pytest.raises(Rejection):
        v.subject(token, time.time() + 60)  # past exp: verified again, and refused


def test_remembered_tokens_are_bounded_and_the_least_recently_used_goes_first(
        monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr("ingest.auth.VERIFIED_TOKENS_MAX", 2)
    v = verifier(S1)
    a, b, c = (jwt.encode(claims(sub=sub), S1, "HS256") for sub in ("a", "b", "c"))
    assert v.subject(a, time.time()) == "a"
    assert v.subject(b, time.time()) == "b"
    assert v.subject(a, time.time()) == "a"  # used again: b is now the least recently used
    assert v.subject(c, time.time()) == "c"  # one over the bound: b is forgotten
    assert len(v._verified) == 2
    v._hs256_macs = verifier(RETIRED)._hs256_macs  # from now on only a remembered token passes
    assert v.subject(a, time.time()) == "a"
    assert v.subject(c, time.time()) == "c"
    refused(v, b)  # verified again, against secrets that no longer sign it


def test_a_secret_of_the_rotation_verifies_only_its_own_tokens():
    """Several secrets at once: each token is checked against each, and a token signed with one
    is never taken for a token of another (the keyed states are copied, never shared)."""
    v = verifier(NEW, OLD)
    for _ in range(3):  # the same keyed states, used again and again
        assert v.subject(jwt.encode(claims(sub="n", exp=int(time.time()) + 601), NEW, "HS256"),
                         time.time()) == "n"
        assert v.subject(jwt.encode(claims(sub="o", exp=int(time.time()) + 602), OLD, "HS256"),
                         time.time()) == "o"
    header, payload, _ = jwt.encode(claims(sub="x"), NEW, "HS256").split(".")
    _, _, old_signature = jwt.encode(claims(sub="y"), OLD, "HS256").split(".")
    refused(v, f"{header}.{payload}.{old_signature}")


@pytest.mark.parametrize("alg", ["RS256", "ES256", "EdDSA"])
def test_public_keys_from_a_jwks_file(alg: str, tmp_path: Path):
    private = {
        "RS256": lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048),
        "ES256": lambda: ec.generate_private_key(ec.SECP256R1()),
        "EdDSA": lambda: ed25519.Ed25519PrivateKey.generate(),
    }[alg]()
    algorithm = jwt.get_algorithm_by_name(alg)
    jwk = json.loads(algorithm.to_jwk(private.public_key()))  # type: ignore[attr-defined]
    jwk.update(kid="k1", alg=alg, use="sig")
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps({"keys": [jwk]}))
    settings = load(env={}, file=None, jwt_issuer=ISS, jwt_audience=AUD, jwt_jwks_file=str(jwks),
                    jwt_hs256_secrets=[])
    v = BuyerVerifier.from_settings(settings)
    token = jwt.encode(claims(), private, algorithm=alg, headers={"kid": "k1"})  # type: ignore[arg-type]
    assert v.subject(token, time.time()) == "alice"
    refused(v, jwt.encode(claims(), private, algorithm=alg, headers={"kid": "other"}))  # type: ignore[arg-type]
    # An HS256 token is not accepted by a verifier that only has public keys (key confusion).
    refused(v, jwt.encode(claims(), "an-hs256-secret-of-thirty-two-bytes!", "HS256"))


def test_no_keys_no_start():
    with pytest.raises(ConfigError):
        BuyerVerifier.from_settings(load(env={}, file=None, jwt_issuer=ISS, jwt_hs256_secrets=[]))
    with pytest.raises(ConfigError):
        verifier("short")
    with pytest.raises(ConfigError):
        BuyerVerifier([S1], {}, "", AUD, 5)


def test_dev_tokens_are_accepted_by_the_dev_stack():
    settings = load(env={}, file=None, jwt_issuer=ISS, jwt_audience=AUD, jwt_hs256_secrets=[S1])
    tokens = dev_tokens(settings, ["alice", "bob"], ttl_s=60)
    v = BuyerVerifier.from_settings(settings)
    assert [v.subject(t, time.time()) for t in tokens] == ["alice", "bob"]


@pytest.mark.parametrize("users, ttl_s", [([""], 60), (["a b"], 60), (["é"], 60),
                                          (["x" * 129], 60), (["alice"], 0)])
def test_dev_tokens_are_never_signed_for_what_ingest_refuses(users: list[str], ttl_s: int):
    settings = load(env={}, file=None, jwt_issuer=ISS, jwt_audience=AUD, jwt_hs256_secrets=[S1])
    with pytest.raises(ConfigError):
        dev_tokens(settings, users, ttl_s=ttl_s)


def test_purchase_ids_need_the_server_secret():
    assert purchase_id(id_key(S1), "alice", "k") == purchase_id(id_key(S1), "alice", "k")
    assert purchase_id(id_key(S1), "alice", "k") != purchase_id(id_key("s2"), "alice", "k")
    assert purchase_id(id_key(S1), "alice", "k") != purchase_id(id_key(S1), "bob", "k")


def test_hs256_edge_cases_match_the_standard():
    v = verifier(S1)
    assert v.subject(jwt.encode(claims(aud=["other", AUD]), S1, "HS256"), time.time()) == "alice"
    assert v.subject(jwt.encode(claims(extra={"role": "vip"}), S1, "HS256"), time.time()) == "alice"
    refused(v, jwt.encode(claims(aud=["other"]), S1, "HS256"))
    refused(v, jwt.encode(claims(iss=None), S1, "HS256"))
    refused(v, jwt.encode(claims(aud=None), S1, "HS256"))
    refused(v, jwt.encode(claims(sub=7), S1, "HS256"))
    refused(v, jwt.encode(claims(), S1, "HS256", headers={"crit": ["exp"]}))
    header, payload, _ = jwt.encode(claims(), S1, "HS256").split(".")
    refused(v, f"{header}.{payload}.")  # no signature
    refused(v, f"{header}.{payload}.!!!!")  # not base64
    refused(v, f"{header}.{payload}")  # two parts


def _respell(segment: str, last: str) -> str:
    return segment[:-1] + last


def _other_spelling(segment: str) -> str:
    """The same bytes with unused low bits of the last character set (a lenient decoder reads
    both as one value)."""
    assert len(segment) % 4 in (2, 3)
    low_bits = 15 if len(segment) % 4 == 2 else 3
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    return _respell(segment, alphabet[alphabet.index(segment[-1]) | low_bits])


@pytest.mark.parametrize("i", [0, 1, 2], ids=["header", "payload", "signature"])
def test_every_segment_must_be_canonical_base64url(i: int):
    """RFC 7515: base64url without padding; one spelling per value. Each alteration below
    decodes to the same bytes in a lenient decoder, so the signature would still verify."""
    v = verifier(S1)
    # Of three payloads one byte apart, at least one leaves unused bits in its last character.
    tokens = [jwt.encode(claims(sub="a" * n), S1, "HS256") for n in (1, 2, 3)]
    good = next(t for t in tokens if len(t.split(".")[1]) % 4 in (2, 3))
    assert v.subject(good, time.time()) == "a" * (tokens.index(good) + 1)
    parts = good.split(".")
    seg = parts[i]
    variants = [seg + "!!", seg + "=" * (-len(seg) % 4 or 4), seg + "="]
    if len(seg) % 4 in (2, 3):  # the payload and the (43-character) signature
        variants.append(_other_spelling(seg))
    if (plus := seg.replace("-", "+").replace("_", "/")) != seg:
        variants.append(plus)
    for variant in variants:
        refused(v, ".".join([*parts[:i], variant, *parts[i + 1:]]))


def test_a_plus_for_a_dash_in_the_signature_is_refused():
    v = verifier(S1)
    for n in range(200):  # a signature with a '-' or '_' in it (most have one)
        token = jwt.encode(claims(sub=f"u{n}"), S1, "HS256")
        head, payload, sig = token.split(".")
        if "-" in sig:
            break
    assert v.subject(token, time.time()) == f"u{n}"
    refused(v, f"{head}.{payload}.{sig.replace('-', '+', 1)}")


@pytest.mark.parametrize(("text", "expected"), [
    ("", b""), ("AA", b"\x00"), ("AAA", b"\x00\x00"), ("AAAA", b"\x00\x00\x00"), ("_-8", b"\xff\xef"),
])
def test_b64url_decode_takes_the_canonical_spelling(text: str, expected: bytes):
    assert b64url_decode(text) == expected


@pytest.mark.parametrize("text", [
    "A", "AAAAA",  # lengths no byte string encodes to
    "AB", "AAB",  # unused bits set: "AA" and "AAA" are the spellings
    "AA==", "AAA=", "AA=",  # padding
    "+/8", "AA AA", "AA\n", "AA.", "ÄA",  # outside the alphabet
])
def test_b64url_decode_refuses_every_other_spelling(text: str):
    with pytest.raises(jwt.DecodeError):
        b64url_decode(text)


ADMIN = "an-admin-token-of-at-least-32-bytes"


def test_the_admin_token_must_be_long_and_not_shaped_like_a_jwt():
    for weak in ("short", "x" * 31, "a" * 16 + "." + "b" * 16 + "." + "c"):
        with pytest.raises(ConfigError):
            AdminGate(weak, RateLimiter(1, 5, 10))
    AdminGate("", RateLimiter(1, 5, 10))  # none: every attempt fails


def test_admin_attempts_are_charged_per_address_then_refused_even_when_right():
    gate = AdminGate(ADMIN, RateLimiter(rate_per_s=1, burst=3, keys_max=10))
    assert gate.attempt("10.0.0.1", ADMIN, 0.0)
    assert gate.attempt("10.0.0.1", ADMIN, 0.0)  # the right token costs nothing
    assert [gate.attempt("10.0.0.1", t, 0.0) for t in ("a", None, ADMIN + "x")] == [False] * 3
    with pytest.raises(Rejection) as exc:
        gate.attempt("10.0.0.1", ADMIN, 0.5)
    assert exc.value.status == 429 and exc.value.retry_after_s == 1
    assert gate.attempt("10.0.0.2", ADMIN, 0.5)  # another address
    assert gate.attempt("10.0.0.1", ADMIN, 1.0)  # a second later: one attempt back
    assert not AdminGate("", RateLimiter(1, 5, 10)).attempt("10.0.0.1", "", 0.0)
