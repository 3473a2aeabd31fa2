"""A peer's Ed25519 identity: key file handling and the libp2p peer ID derived from it.

The key file is PKCS#8 PEM (readable by OpenSSL), created with mode 0600 and never overwritten.
The peer ID follows the libp2p spec (peer-ids.md): the protobuf ``PublicKey{Type=Ed25519, Data}``
wrapped in an identity multihash, in base58btc — "12D3KooW...". Pure: no libp2p import here.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

import base58
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gossiplearn.errors import UserError

KEY_FILE_NAME = "identity.key"

# protobuf PublicKey { KeyType Type = 1 (Ed25519 = 1); bytes Data = 2 (32 bytes) }
_PB_ED25519_PREFIX = bytes([0x08, 0x01, 0x12, 0x20])
_MULTIHASH_IDENTITY = bytes([0x00, 0x24])  # identity hash, 36-byte digest


@dataclass(frozen=True)
class Identity:
    """An Ed25519 key pair; ``seed`` is the 32-byte private key."""

    seed: bytes

    @staticmethod
    def generate() -> Identity:
        key = Ed25519PrivateKey.generate()
        return Identity(key.private_bytes_raw())

    @property
    def public_key(self) -> bytes:
        return Ed25519PrivateKey.from_private_bytes(self.seed).public_key().public_bytes_raw()

    @property
    def peer_id(self) -> str:
        return peer_id_from_public_key(self.public_key)

    def sign(self, data: bytes) -> bytes:
        return Ed25519PrivateKey.from_private_bytes(self.seed).sign(data)


def peer_id_from_public_key(public_key: bytes) -> str:
    """The libp2p peer ID (base58btc) of a raw 32-byte Ed25519 public key."""
    if len(public_key) != 32:
        raise ValueError("an Ed25519 public key is 32 bytes")
    digest = _PB_ED25519_PREFIX + public_key
    return str(base58.b58encode(_MULTIHASH_IDENTITY + digest).decode("ascii"))


def public_key_from_peer_id(peer_id: str) -> bytes:
    """Inverse of ``peer_id_from_public_key``; raises ValueError for other kinds of peer ID."""
    if peer_id != peer_id.strip():  # base58 strips silently; a key with spaces matches no peer
        raise ValueError(f"{peer_id!r} has leading or trailing whitespace")
    try:
        raw = base58.b58decode(peer_id)
    except ValueError as exc:
        raise ValueError(f"{peer_id!r} is not base58") from exc
    prefix = _MULTIHASH_IDENTITY + _PB_ED25519_PREFIX
    if len(raw) != len(prefix) + 32 or not raw.startswith(prefix):
        raise ValueError(f"{peer_id!r} is not an Ed25519 libp2p peer ID")
    return bytes(raw[len(prefix) :])


def is_peer_id(text: str) -> bool:
    try:
        public_key_from_peer_id(text)
    except ValueError:
        return False
    return True


def create_key_file(path: Path) -> tuple[Identity, bool]:
    """Load the identity at ``path``, creating it (mode 0600) if absent.

    Returns ``(identity, created)``. An existing file is never overwritten.
    """
    if path.exists():
        return load_key_file(path), False
    ident = Identity.generate()
    pem = Ed25519PrivateKey.from_private_bytes(ident.seed).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # created concurrently: use that one
        return load_key_file(path), False
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
        f.flush()
        os.fsync(f.fileno())
    return ident, True


def load_key_file(path: Path) -> Identity:
    """Read an identity key file; ``UserError`` says what is wrong and what to do."""
    try:
        mode = path.stat().st_mode
        data = path.read_bytes()
    except FileNotFoundError:
        raise UserError(
            f"no identity key at {path}; run `gossiplearn init --home {path.parent}` first"
        ) from None
    except OSError as exc:
        raise UserError(f"cannot read identity key {path}: {exc.strerror}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise UserError(
            f"identity key {path} is accessible by other users (mode {stat.S_IMODE(mode):o}); "
            f"run `chmod 600 {path}`"
        )
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise UserError(f"identity key {path} is not a valid PEM private key: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise UserError(f"identity key {path} is not an Ed25519 key")
    return Identity(key.private_bytes_raw())
