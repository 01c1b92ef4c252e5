"""config.settings: defaults < file < environment, and settings that cannot be are one error."""

from __future__ import annotations

import pytest

from config.errors import SettingsError
from config.settings import load
from launch.cli import main


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
