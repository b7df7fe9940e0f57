"""API keys as the gateway checks them (pure): Bearer tokens against SHA-256 digests.

The gateway keeps only digests of the keys it reads from each model's Secret, never the keys,
and compares in constant time. Nothing here logs or returns a key.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Mapping
from typing import Any


def digest(key: str | bytes) -> bytes:
    raw = key.encode("utf-8") if isinstance(key, str) else key
    return hashlib.sha256(raw).digest()


def bearer_token(headers: Mapping[str, str]) -> str | None:
    """The token of `Authorization: Bearer <token>` (case-insensitive scheme); None when absent."""
    value = headers.get("Authorization") or headers.get("authorization")
    if not value:
        return None
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def key_matches(token: str | None, expected_digest: bytes | None) -> bool:
    """Whether `token` is the key whose digest is `expected_digest` (constant time)."""
    if token is None or expected_digest is None:
        return False
    return hmac.compare_digest(digest(token), expected_digest)


class SecretKeyError(ValueError):
    """A model's API-key Secret has no usable value under its key (message names Secret and key, never the value)."""


def digest_from_secret(secret: Mapping[str, Any], key: str) -> bytes:
    """The digest of `data[key]` of a Secret as the API returns it (base64); SecretKeyError otherwise."""
    name = (secret.get("metadata") or {}).get("name", "?")
    encoded = (secret.get("data") or {}).get(key)
    if not encoded:
        raise SecretKeyError(f"Secret {name} has no key {key!r}")
    try:
        value = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise SecretKeyError(f"Secret {name} key {key!r} is not base64") from None
    if not value:  # compared as stored, like vLLM's VLLM_API_KEY from the same Secret
        raise SecretKeyError(f"Secret {name} key {key!r} is empty")
    return digest(value)
