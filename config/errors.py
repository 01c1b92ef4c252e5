"""Configuration that cannot be: the one home of the errors a process raises about its settings
before it does anything (it refuses to start, or a command exits 2, saying which setting)."""

from __future__ import annotations


class SettingsError(ValueError):
    """Settings that name no field or hold a value of the wrong type."""


class ConfigError(ValueError):
    """Settings that load but cannot work (no way to verify buyers, no id secret, a token too
    short): the process refuses to start rather than run unsafely."""
