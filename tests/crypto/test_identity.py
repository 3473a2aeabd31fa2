"""Identity: libp2p-compatible peer IDs and careful key-file handling."""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path

import base58
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from hypothesis import given, settings
from hypothesis import strategies as st

# The reference implementation our pure derivation must agree with.
from libp2p.crypto.ed25519 import Ed25519PrivateKey as Libp2pPrivateKey
from libp2p.peer.id import ID

from gossiplearn.crypto.identity import (
    KEY_FILE_NAME,
    Identity,
    create_key_file,
    is_peer_id,
    load_key_file,
    peer_id_from_public_key,
    public_key_from_peer_id,
)
from gossiplearn.errors import UserError

seeds = st.binary(min_size=32, max_size=32)


# ---------------------------------------------------------------------------------- peer IDs


@settings(deadline=None, max_examples=50)
@given(seeds)
def test_peer_id_matches_libp2p(seed: bytes) -> None:
    ours = Identity(seed)
    theirs = ID.from_pubkey(Libp2pPrivateKey.from_bytes(seed).get_public_key())
    assert ours.peer_id == theirs.to_base58()
    assert ours.public_key == Libp2pPrivateKey.from_bytes(seed).get_public_key().to_bytes()


def test_generated_peer_ids_have_the_ed25519_prefix() -> None:
    ident = Identity.generate()
    assert ident.peer_id.startswith("12D3KooW")
    assert len(ident.seed) == 32
    assert Identity.generate().peer_id != ident.peer_id


@settings(deadline=None, max_examples=50)
@given(seeds)
def test_public_key_round_trips_through_the_peer_id(seed: bytes) -> None:
    ident = Identity(seed)
    assert public_key_from_peer_id(ident.peer_id) == ident.public_key
    assert is_peer_id(ident.peer_id)


def test_signatures_verify_with_the_key_in_the_peer_id() -> None:
    ident = Identity.generate()
    key = Ed25519PublicKey.from_public_bytes(public_key_from_peer_id(ident.peer_id))
    key.verify(ident.sign(b"hello"), b"hello")  # raises InvalidSignature if wrong


def _sha256_peer_id() -> str:
    """An RSA-style peer ID: a sha2-256 multihash, "Qm..." (not an inlined Ed25519 key)."""
    return base58.b58encode(bytes([0x12, 0x20]) + bytes(range(32))).decode()


@pytest.mark.parametrize(
    "text",
    [
        "",
        "not base58: 0OIl",
        "12D3KooW",
        _sha256_peer_id(),
        Identity(bytes(32)).peer_id[:-1],
        Identity(bytes(32)).peer_id + "1",
    ],
    ids=["empty", "bad-alphabet", "prefix-only", "sha256", "truncated", "extended"],
)
def test_other_strings_are_not_peer_ids(text: str) -> None:
    assert not is_peer_id(text)
    with pytest.raises(ValueError, match=r"not (base58|an Ed25519)"):
        public_key_from_peer_id(text)


@pytest.mark.parametrize("size", [0, 31, 33])
def test_peer_id_needs_a_32_byte_key(size: int) -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        peer_id_from_public_key(bytes(size))


# ---------------------------------------------------------------------------------- key files


def test_create_key_file_makes_a_private_pkcs8_file(tmp_path: Path) -> None:
    path = tmp_path / "new" / "home" / KEY_FILE_NAME
    ident, created = create_key_file(path)
    assert created
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    pem = path.read_bytes()
    assert pem.startswith(b"-----BEGIN PRIVATE KEY-----")
    key = serialization.load_pem_private_key(pem, password=None)
    assert isinstance(key, Ed25519PrivateKey)
    assert key.public_key().public_bytes_raw() == ident.public_key
    assert load_key_file(path) == ident


def test_create_key_file_never_overwrites(tmp_path: Path) -> None:
    path = tmp_path / KEY_FILE_NAME
    first, created = create_key_file(path)
    before = path.read_bytes()
    again, created_again = create_key_file(path)
    assert created
    assert not created_again
    assert again == first
    assert path.read_bytes() == before


def test_create_key_file_refuses_to_replace_a_bad_file(tmp_path: Path) -> None:
    path = tmp_path / KEY_FILE_NAME
    path.write_bytes(b"garbage")
    path.chmod(0o600)
    with pytest.raises(UserError):
        create_key_file(path)
    assert path.read_bytes() == b"garbage"


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660, 0o610])
def test_load_refuses_a_key_others_can_access(tmp_path: Path, mode: int) -> None:
    path = tmp_path / KEY_FILE_NAME
    create_key_file(path)
    path.chmod(mode)
    with pytest.raises(UserError, match="chmod 600") as info:
        load_key_file(path)
    assert str(path) in str(info.value)
    path.chmod(0o600)
    load_key_file(path)


def test_load_accepts_an_owner_read_only_key(tmp_path: Path) -> None:
    path = tmp_path / KEY_FILE_NAME
    ident, _ = create_key_file(path)
    path.chmod(0o400)
    assert load_key_file(path) == ident


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"garbage",
        b"-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n",
        os.urandom(64),
    ],
    ids=["empty", "text", "bad-pem-body", "random"],
)
def test_load_refuses_garbage(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / KEY_FILE_NAME
    path.write_bytes(content)
    path.chmod(0o600)
    with pytest.raises(UserError, match="not a valid PEM private key"):
        load_key_file(path)


def _pkcs8_with_unknown_algorithm() -> bytes:
    """A well-formed PKCS#8 PEM whose algorithm OID (1.2.3.4) no library knows."""
    oid = bytes([0x06, 0x03, 0x2A, 0x03, 0x04])
    algorithm = bytes([0x30, len(oid)]) + oid
    private_key = bytes([0x04, 0x22, 0x04, 0x20]) + b"\x01" * 32
    body = bytes([0x02, 0x01, 0x00]) + algorithm + private_key
    der = bytes([0x30, len(body)]) + body
    return (
        b"-----BEGIN PRIVATE KEY-----\n" + base64.encodebytes(der) + b"-----END PRIVATE KEY-----\n"
    )


def test_load_refuses_a_key_of_an_unknown_algorithm(tmp_path: Path) -> None:
    path = tmp_path / KEY_FILE_NAME
    path.write_bytes(_pkcs8_with_unknown_algorithm())
    path.chmod(0o600)
    with pytest.raises(UserError):
        load_key_file(path)


def test_load_refuses_a_key_of_another_type(tmp_path: Path) -> None:
    path = tmp_path / KEY_FILE_NAME
    pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    path.write_bytes(pem)
    path.chmod(0o600)
    with pytest.raises(UserError, match="not an Ed25519 key"):
        load_key_file(path)


def test_load_refuses_an_encrypted_key(tmp_path: Path) -> None:
    path = tmp_path / KEY_FILE_NAME
    create_key_file(path)
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    with pytest.raises(UserError):
        load_key_file(path)


def test_missing_key_file_says_to_run_init(tmp_path: Path) -> None:
    path = tmp_path / "home" / KEY_FILE_NAME
    with pytest.raises(UserError, match="gossiplearn init") as info:
        load_key_file(path)
    assert str(path.parent) in str(info.value)


def test_unreadable_key_path_is_a_user_error(tmp_path: Path) -> None:
    path = tmp_path / KEY_FILE_NAME
    path.mkdir(mode=0o700)  # a directory where the key should be
    with pytest.raises(UserError, match="cannot read"):
        load_key_file(path)
