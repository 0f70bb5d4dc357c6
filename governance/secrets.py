"""Secret input fields, encrypted at rest with Fernet (``cryptography``).

The key comes from ``JOBS_SECRET_KEY`` (a urlsafe base64 Fernet key) or, when unset, is
derived from ``SECRET_KEY``. Secret values are given only to the handler; they appear in no
API response, admin page, stamp or log line — nor in a hash anyone could test a guess against:
the idempotency request hash is an HMAC under ``JOBS_REQUEST_HASH_KEY`` (:func:`request_hmac`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from functools import lru_cache
from typing import Any

from cryptography.fernet import Fernet
from django.conf import settings


@lru_cache(maxsize=1)
def _fernet() -> Fernet:
    key = settings.JOBS_SECRET_KEY
    if not key:
        key = base64.urlsafe_b64encode(hashlib.sha256(settings.SECRET_KEY.encode()).digest()).decode()
    return Fernet(key.encode())


def _request_hash_key() -> bytes:
    key: str = settings.JOBS_REQUEST_HASH_KEY
    if key:
        return key.encode()
    # Derived, and distinct from the Fernet key derived from the same SECRET_KEY.
    return hashlib.sha256(b"jobplatform request hash\x00" + settings.SECRET_KEY.encode()).digest()


def request_hmac(payload: bytes) -> str:
    """HMAC-SHA256 (hex, 64 characters) of a canonical request payload under the server's key."""
    return hmac.new(_request_hash_key(), payload, hashlib.sha256).hexdigest()


def legacy_request_hash(payload: bytes) -> str:
    """What a hash stored before the HMAC was rewrapped into (migration jobs 0004): the HMAC of
    the old plain SHA-256, so a repeat of an old submit still finds its job."""
    return request_hmac(b"legacy:" + hashlib.sha256(payload).hexdigest().encode())


def split_secrets(inputs: dict[str, Any], secret_fields: tuple[str, ...]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Return (public inputs, secret values) for the top-level ``secret_fields``."""
    public = {k: v for k, v in inputs.items() if k not in secret_fields}
    secret = {k: v for k, v in inputs.items() if k in secret_fields}
    return public, secret


def encrypt_secrets(values: dict[str, Any]) -> str:
    if not values:
        return ""
    return _fernet().encrypt(json.dumps(values).encode()).decode()


def decrypt_secrets(token: str) -> dict[str, Any]:
    if not token:
        return {}
    data: dict[str, Any] = json.loads(_fernet().decrypt(token.encode()))
    return data


SECRET_MASK = "[SECRET]"
_MIN_SUBSTRING_MASK = 6


def secrets_scrub(value: Any, secret_values: list[str], *, public: Any = None) -> Any:
    """Return ``value`` with every occurrence of a secret string masked, recursively.

    Handler outputs and error messages are stored and shown; a handler that echoes its token
    (``return inputs``, ``raise ValueError(f"bad token {token}")``) must not leak it there.

    ``public`` is what the caller shows anyway (the job's public inputs): a secret value that is
    also a whole public value is no secret to hide, and masking it would rewrite the caller's
    own non-secret data (``{"echo": "abc"}`` stored as ``{"echo": "[SECRET]"}`` and committed
    so). A secret merely contained in a longer public string is still masked.
    """
    needles = [s for s in secret_values if s]
    if public is not None and needles:
        shown = set(_strings_in(public))
        needles = [n for n in needles if n not in shown]
    if not needles:
        return value
    if isinstance(value, str):
        for needle in needles:
            # A very short secret is masked only as a whole value: replacing it inside every
            # string would mangle unrelated output.
            if len(needle) >= _MIN_SUBSTRING_MASK:
                value = value.replace(needle, SECRET_MASK)
            elif value == needle:
                value = SECRET_MASK
        return value
    if isinstance(value, dict):
        return {k: secrets_scrub(v, needles) for k, v in value.items()}
    if isinstance(value, list):
        return [secrets_scrub(v, needles) for v in value]
    return value


def _strings_in(value: Any) -> list[str]:
    """Every string in a JSON value (keys and values), and the JSON form of other scalars."""
    out: list[str] = []
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            out.append(item)
        elif isinstance(item, dict):
            out.extend(str(k) for k in item)
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
        elif item is not None and not isinstance(item, bool):
            out.append(json.dumps(item))
    return out


def secret_strings(values: dict[str, Any]) -> list[str]:
    """The string forms of decrypted secret values, for :func:`secrets_scrub`."""
    out: list[str] = []
    for v in values.values():
        if isinstance(v, str):
            out.append(v)
        elif v is not None and not isinstance(v, bool):
            out.append(json.dumps(v))
    return out


def text_encrypt(value: str) -> str:
    """One secret string, encrypted (signing secrets and the like)."""
    return _fernet().encrypt(value.encode()).decode()


def text_decrypt(token: str) -> str:
    return _fernet().decrypt(token.encode()).decode() if token else ""
