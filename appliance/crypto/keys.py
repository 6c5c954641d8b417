"""Ed25519 key files.

Private keys are PEM PKCS#8 files written 0600 and refused when group or others can read them.
Public keys are PEM SubjectPublicKeyInfo files; readers also accept the 32 raw key bytes, or that
key as one line of base64 or hex (the form trust maps use inline).
"""

from __future__ import annotations

import base64
import binascii
import os
import stat
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from nacl.bindings import crypto_core_ed25519_is_valid_point
from nacl.signing import SigningKey, VerifyKey

from appliance.errors import CommandError


class KeyFileError(CommandError, ValueError):
    """A key file is missing, malformed or too widely readable; the message says which and why."""


def _check_private_mode(path: Path) -> None:
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise KeyFileError(
            f"private key {path} is readable by others (mode {mode:04o}): run chmod 600 {path}"
        )


def write_private_file(path: Path, data: bytes) -> None:
    """Write a secret file created 0600 from the start (never briefly world-readable)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def write_signing_key(path: Path, key: SigningKey) -> None:
    """Store an Ed25519 signing key as PEM PKCS#8, mode 0600."""
    pem = ed25519.Ed25519PrivateKey.from_private_bytes(bytes(key)).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    write_private_file(path, pem)


def write_verify_key(path: Path, key: VerifyKey) -> None:
    """Store an Ed25519 public key as PEM SubjectPublicKeyInfo, mode 0644."""
    pem = ed25519.Ed25519PublicKey.from_public_bytes(bytes(key)).public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pem)
    path.chmod(0o644)


def load_private_pem(path: Path) -> PrivateKeyTypes:
    """Read an unencrypted PEM private key, refusing one readable by group or others."""
    try:
        _check_private_mode(path)
        data = path.read_bytes()
    except OSError as exc:
        raise KeyFileError(f"cannot read private key {path}: {exc.strerror}") from exc
    try:
        return serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise KeyFileError(f"{path} is not an unencrypted PEM private key") from exc


def load_signing_key(path: Path) -> SigningKey:
    """Read a PEM PKCS#8 Ed25519 private key, refusing one readable by group or others."""
    key = load_private_pem(path)
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise KeyFileError(f"signing key {path} is not an Ed25519 key")
    raw = key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    return SigningKey(raw)


def parse_verify_key(data: bytes | str, where: str) -> VerifyKey:
    """Parse an Ed25519 public key from PEM, 32 raw bytes, or one line of base64 or hex."""
    raw = data.encode() if isinstance(data, str) else data
    text = raw.strip()
    if text.startswith(b"-----BEGIN"):
        try:
            key = serialization.load_pem_public_key(text)
        except ValueError as exc:
            raise KeyFileError(f"{where}: not a PEM public key: {exc}") from exc
        if not isinstance(key, ed25519.Ed25519PublicKey):
            raise KeyFileError(f"{where}: not an Ed25519 public key")
        return VerifyKey(
            key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        )
    if len(raw) == 32 and not isinstance(data, str):
        return VerifyKey(raw)
    for decode in (binascii.unhexlify, base64.b64decode):
        try:
            decoded = decode(text)
        except (binascii.Error, ValueError):
            continue
        if len(decoded) == 32:
            return VerifyKey(decoded)
    raise KeyFileError(f"{where}: not an Ed25519 public key (PEM, 32 raw bytes, base64 or hex)")


def require_prime_order(key: VerifyKey, where: str) -> VerifyKey:
    """key itself, if it is a canonical encoding of a point in the prime-order subgroup.

    A key of small order, or with a small-order (torsion) component, is refused: for such a key
    the cofactored batch equation (crypto/_ed25519_batch.c) accepts signatures that libsodium's
    single verification refuses, so which of them passes would depend on batch mates. No honest
    key is affected: a key derived from a secret scalar is always in the subgroup. The check is
    libsodium's crypto_core_ed25519_is_valid_point: canonical, on the curve, not of small order,
    and L * key == identity.
    """
    if not crypto_core_ed25519_is_valid_point(bytes(key)):
        raise KeyFileError(
            f"{where}: not a usable Ed25519 public key (small order, a torsion component, "
            "or a non-canonical encoding)"
        )
    return key


def load_verify_key(path: Path) -> VerifyKey:
    """Read an Ed25519 public key file in any form parse_verify_key accepts."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise KeyFileError(f"cannot read public key {path}: {exc.strerror}") from exc
    return parse_verify_key(data, str(path))
