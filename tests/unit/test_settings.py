"""config.settings: defaults < file < environment, and settings that cannot be are one error:
among them an HS256 secret too short to be one, or a list of secrets that names none, which is
refused wherever it comes from and never echoed."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from config.errors import SettingsError
from config.settings import HS256_SECRET_MIN_BYTES, REPO_ROOT, load
from launch.cli import main

SECRET = "s" * HS256_SECRET_MIN_BYTES
OTHER = "an-hs256-secret-of-more-than-thirty-two-bytes"


def test_the_environment_overrides_and_converts():
    s = load(env={"FLASHSALE_SHARDS": "3", "NATS_URL": "nats://h:1"}, file=None)
    assert (s.shards, s.nats_url) == (3, "nats://h:1")


@pytest.mark.parametrize("env, overrides, said", [
    ({"FLASHSALE_SHARDS": "abc"}, {}, "setting shards: Expected `int`, got `str`"),
    ({"FLASHSALE_INGEST_PORT": "1.5"}, {}, "setting ingest_port"),
    ({}, {"nope": 1}, "unknown settings: ['nope']"),
])
def test_a_setting_that_cannot_be_is_a_settings_error_naming_it(env, overrides, said):
    with pytest.raises(SettingsError) as e:
        load(env=env, file=None, **overrides)
    assert said in str(e.value)


def test_the_command_line_says_so_in_one_line(monkeypatch, capsys):
    monkeypatch.setenv("FLASHSALE_SHARDS", "abc")
    assert main(["env"]) == 2
    out = capsys.readouterr()
    assert out.out == "" and out.err == "flashsale: setting shards: Expected `int`, got `str`\n"


def test_secrets_from_the_environment_are_comma_separated(tmp_path):
    s = load(env={"FLASHSALE_JWT_HS256_SECRETS": f" {SECRET} ,{OTHER}"}, file=None)
    assert s.jwt_hs256_secrets == [SECRET, OTHER]
    no_file = tmp_path / "empty.toml"
    no_file.write_text("")
    assert load(env={}, file=no_file).jwt_hs256_secrets == []  # unset: none, for a JWKS-only stack


@pytest.mark.parametrize("value, said", [
    ("[]", "setting jwt_hs256_secrets: in the environment a list is comma-separated, without "
           "brackets or quotes"),
    (f'["{SECRET}"]', "without brackets or quotes"),
    (f"'{SECRET}'", "without brackets or quotes"),
    ("", "setting jwt_hs256_secrets: set but names no secret; leave it unset for none"),
    (" , ", "names no secret"),
    ("short", "setting jwt_hs256_secrets: secret 1 of 1 has 5 bytes; each needs at least 32"),
    (f"{SECRET},{SECRET[1:]}", "secret 2 of 2 has 31 bytes"),
])
def test_a_malformed_or_short_secret_in_the_environment_is_refused(value: str, said: str):
    with pytest.raises(SettingsError) as e:
        load(env={"FLASHSALE_JWT_HS256_SECRETS": value}, file=None)
    assert said in str(e.value) and "\n" not in str(e.value)
    given = [part for part in value.strip("[]'\" ").split(",") if len(part) > 2]
    assert not [part for part in given if part in str(e.value)]  # never echoed


def test_a_short_secret_is_refused_from_a_file_or_an_override_too(tmp_path):
    file = tmp_path / "settings.toml"
    file.write_text('jwt_hs256_secrets = ["dev-secret"]\n')
    with pytest.raises(SettingsError, match="secret 1 of 1 has 10 bytes"):
        load(env={}, file=file)
    with pytest.raises(SettingsError, match="secret 2 of 2 has 3 bytes"):
        load(env={}, file=None, jwt_hs256_secrets=[SECRET, "abc"])


def test_no_token_is_signed_with_a_malformed_secret(monkeypatch, capsys):
    monkeypatch.setenv("FLASHSALE_JWT_HS256_SECRETS", "[]")
    assert main(["token", "alice"]) == 2
    out = capsys.readouterr()
    assert out.out == "" and out.err == ("flashsale: setting jwt_hs256_secrets: in the environment a "
                                         "list is comma-separated, without brackets or quotes\n")


@pytest.mark.parametrize("service", ["ingest", "committer", "gateway"])
def test_a_service_with_bad_settings_exits_with_one_line(service: str):
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLASHSALE_")}
    args = ["--shard", "0"] if service == "committer" else []
    done = subprocess.run([sys.executable, "-m", service, *args],
                          env={**env, "FLASHSALE_SHARDS": "many"}, capture_output=True, text=True,
                          cwd=REPO_ROOT, timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [f"{service}: setting shards: Expected `int`, got `str`"]
