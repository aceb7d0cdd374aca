"""Crypto-specific settings from the environment, validated at start.

The token sealing key itself is a shared setting (`TOKEN_SEALING_KEY` in runtime.config);
this module turns it into keys and refuses to start in production without it.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import sys

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from runtime.config import Settings, settings_or_exit

log = logging.getLogger(__name__)


class CryptoConfig(BaseSettings):
    """Argon2id cost (RFC 9106's second recommended option by default) and its limits."""

    model_config = SettingsConfigDict(env_prefix="", case_sensitive=False, extra="ignore")

    # Cost of new keyrings and of DeriveKey without explicit parameters.
    argon2_memory_kib: int = Field(default=65536, ge=8192, le=1048576)
    argon2_time_cost: int = Field(default=3, ge=1, le=10)
    argon2_parallelism: int = Field(default=4, ge=1, le=8)
    # Derivations running at once, and the memory they may use together: a burst of unlocks
    # waits for a slot instead of exhausting memory or CPU.
    argon2_max_concurrent: int = Field(default=2, ge=1, le=64)
    argon2_memory_budget_kib: int = Field(default=262144, ge=8192)
    # Callers waiting for a slot beyond this get RESOURCE_EXHAUSTED at once.
    argon2_max_waiting: int = Field(default=64, ge=0, le=10000)

    @model_validator(mode="after")
    def _budget_covers_default(self) -> CryptoConfig:
        if self.argon2_memory_budget_kib < self.argon2_memory_kib:
            raise ValueError("ARGON2_MEMORY_BUDGET_KIB must be at least ARGON2_MEMORY_KIB")
        return self


def load_crypto_config() -> CryptoConfig:
    return settings_or_exit(CryptoConfig, "crypto configuration")


def token_master_key(settings: Settings) -> bytes:
    """The 32-byte key all token keys derive from; exits with a clear message when unusable."""
    encoded = settings.token_sealing_key
    if not encoded:
        if settings.environment == "production":
            print(
                "ContextCache crypto configuration error:\n"
                "  TOKEN_SEALING_KEY: required when ENVIRONMENT=production "
                "(base64 of 32 random bytes, e.g. `openssl rand -base64 32`)",
                file=sys.stderr,
            )
            raise SystemExit(2)
        log.warning(
            "TOKEN_SEALING_KEY is not set: generated a random one for this process; unlock "
            "tokens will not survive a restart and other replicas will reject them"
        )
        return os.urandom(32)
    try:
        key = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if len(key) != 32:
        print(
            "ContextCache crypto configuration error:\n"
            "  TOKEN_SEALING_KEY: must be the base64 encoding of exactly 32 bytes",
            file=sys.stderr,
        )
        raise SystemExit(2)
    return key


def previous_token_master_keys(settings: Settings) -> tuple[bytes, ...]:
    """TOKEN_SEALING_KEY_PREVIOUS: keys rotated out whose tokens and grants stay valid."""
    keys = []
    for encoded in (settings.token_sealing_key_previous or "").split(","):
        if not encoded.strip():
            continue
        try:
            key = base64.b64decode(encoded.strip(), validate=True)
        except (binascii.Error, ValueError):
            key = b""
        if len(key) != 32:
            print(
                "ContextCache crypto configuration error:\n"
                "  TOKEN_SEALING_KEY_PREVIOUS: each comma-separated key must be the base64 "
                "encoding of exactly 32 bytes",
                file=sys.stderr,
            )
            raise SystemExit(2)
        keys.append(key)
    return tuple(keys)
