"""The Ed25519 key that signs audit exports: load or create it, publish and parse public keys.

No database: ``verify_audit --export`` uses this module offline.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from django.conf import settings

ALGORITHM = "ed25519"
RAW_PUBLIC_KEY_BYTES = 32


class SigningKeyError(Exception):
    """The signing key or a public key could not be read."""


def signing_key_path() -> Path:
    return Path(settings.AUDIT_SIGNING_KEY_PATH)


def _write_new_key(path: Path) -> None:
    """Create the key file with mode 0600; a concurrent creator wins and its key is kept."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pem = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)
        handle.flush()
        os.fsync(handle.fileno())


def signing_key_load(*, create: bool = True, path: Path | None = None) -> Ed25519PrivateKey:
    """The private key at ``AUDIT_SIGNING_KEY_PATH``, generated there first if missing and ``create``."""
    key_path = path or signing_key_path()
    if not key_path.exists():
        if not create:
            raise SigningKeyError(f"no signing key at {key_path}")
        _write_new_key(key_path)
    try:
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (ValueError, TypeError) as exc:
        raise SigningKeyError(f"{key_path} is not an unencrypted PEM private key: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise SigningKeyError(f"{key_path} is not an Ed25519 key")
    return key


def public_key_raw(public_key: Ed25519PublicKey) -> bytes:
    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def public_key_pem(public_key: Ed25519PublicKey) -> str:
    return public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode("ascii")


def key_id(public_key: Ed25519PublicKey) -> str:
    """A short name for a public key: the first 16 hex digits of SHA-256 over its 32 raw bytes."""
    return hashlib.sha256(public_key_raw(public_key)).hexdigest()[:16]


def public_key_document(public_key: Ed25519PublicKey) -> dict[str, str]:
    """What ``GET /api/v1/audit/public-key`` answers (and ``verify_audit --public-key`` reads back)."""
    return {
        "algorithm": ALGORITHM,
        "key_id": key_id(public_key),
        "public_key_pem": public_key_pem(public_key),
        "public_key_base64": base64.b64encode(public_key_raw(public_key)).decode("ascii"),
    }


def public_key_parse(data: bytes) -> Ed25519PublicKey:
    """A public key from a file's bytes: PEM (public, or a private key to derive it from), the
    JSON document served at ``/api/v1/audit/public-key``, or the 32 raw bytes in base64."""
    text = data.strip()
    if text.startswith(b"{"):
        try:
            document = json.loads(text)
            text = str(document["public_key_pem"]).encode("ascii")
        except (ValueError, KeyError, TypeError) as exc:
            raise SigningKeyError(f"not a public key document: {exc}") from None
    if text.startswith(b"-----BEGIN"):
        try:
            if b"PRIVATE KEY" in text.split(b"\n", 1)[0]:
                private = serialization.load_pem_private_key(text, password=None)
                if not isinstance(private, Ed25519PrivateKey):
                    raise SigningKeyError("the PEM private key is not an Ed25519 key")
                return private.public_key()
            key = serialization.load_pem_public_key(text)
        except ValueError as exc:
            raise SigningKeyError(f"unreadable PEM key: {exc}") from None
        if not isinstance(key, Ed25519PublicKey):
            raise SigningKeyError("the PEM public key is not an Ed25519 key")
        return key
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise SigningKeyError("not a PEM key, a public key document or base64") from None
    if len(raw) != RAW_PUBLIC_KEY_BYTES:
        raise SigningKeyError(f"a raw Ed25519 public key has 32 bytes, this has {len(raw)}")
    return Ed25519PublicKey.from_public_bytes(raw)


def signature_valid(public_key: Ed25519PublicKey, signature: bytes, message: bytes) -> bool:
    try:
        public_key.verify(signature, message)
    except InvalidSignature:
        return False
    return True
