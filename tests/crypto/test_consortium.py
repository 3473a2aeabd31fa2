"""The consortium key file (libp2p private-network format) and the member list."""

from __future__ import annotations

import base64
import os
import re
import stat
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gossiplearn.crypto.consortium import (
    KEY_HEADER,
    MAX_NAME,
    ConsortiumKey,
    Members,
    load_key_file,
    write_key_file,
)
from gossiplearn.crypto.identity import Identity
from gossiplearn.errors import UserError

secrets32 = st.binary(min_size=32, max_size=32)
WHERE = "test.key"


def key_text(encoding: str, body: str) -> str:
    return f"{KEY_HEADER}\n{encoding}\n{body}\n"


# ---------------------------------------------------------------------------------- the key


@given(secrets32)
def test_to_text_and_parse_round_trip(secret: bytes) -> None:
    key = ConsortiumKey(secret)
    text = key.to_text()
    assert text.splitlines() == [KEY_HEADER, "/base16/", secret.hex()]
    assert ConsortiumKey.parse(text) == key


@given(secrets32)
def test_parse_accepts_base16_and_base64(secret: bytes) -> None:
    b16 = key_text("/base16/", secret.hex())
    b64 = key_text("/base64/", base64.b64encode(secret).decode())
    assert ConsortiumKey.parse(b16).secret == secret
    assert ConsortiumKey.parse(b64).secret == secret
    # upper-case hex and surrounding blank space, as hand-edited files have
    assert ConsortiumKey.parse(f"\n  {KEY_HEADER}  \n/base16/\n{secret.hex().upper()}\n\n") == (
        ConsortiumKey(secret)
    )


def test_generate_gives_distinct_keys_that_round_trip() -> None:
    keys = {ConsortiumKey.generate() for _ in range(16)}
    assert len(keys) == 16
    for key in keys:
        assert len(key.secret) == 32
        assert ConsortiumKey.parse(key.to_text()) == key


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "is not a consortium key"),
        ("hello", "is not a consortium key"),
        (key_text("/base16/", "00" * 32).replace("/psk/", "/psx/"), "is not a consortium key"),
        (f"{KEY_HEADER}\n/base16/\n", "is not a consortium key"),  # two lines
        (key_text("/base16/", "00" * 32) + "extra\n", "is not a consortium key"),
        (key_text("/base16/", "00" * 31), "the key is 31 bytes, a consortium key is 32"),
        (key_text("/base16/", "00" * 33), "the key is 33 bytes, a consortium key is 32"),
        (key_text("/base64/", base64.b64encode(b"x" * 16).decode()), "the key is 16 bytes"),
        (key_text("/base16/", "zz" * 32), "not valid base16"),
        (key_text("/base16/", "0" * 63), "not valid base16"),  # odd number of digits
        (key_text("/base64/", "!!!!" * 11), "not valid base64"),
        (key_text("/base58/", "00" * 32), "unknown key encoding '/base58/'"),
    ],
)
def test_parse_rejects_with_a_message_naming_the_problem(text: str, problem: str) -> None:
    with pytest.raises(UserError, match=r"^test\.key") as info:
        ConsortiumKey.parse(text, WHERE)
    assert problem in str(info.value)


def test_a_bad_header_says_how_to_create_a_key() -> None:
    with pytest.raises(UserError, match="gossiplearn consortium create"):
        ConsortiumKey.parse("not a key")


def test_a_secret_of_the_wrong_length_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        ConsortiumKey(b"short")


@given(secrets32)
def test_key_id_is_stable_short_and_does_not_reveal_the_key(secret: bytes) -> None:
    key = ConsortiumKey(secret)
    assert key.key_id == ConsortiumKey(bytes(secret)).key_id  # a function of the secret only
    assert len(key.key_id) == 8
    assert all(c in "0123456789abcdef" for c in key.key_id)
    assert key.key_id not in key.hex
    assert secret.hex() not in repr(key)


def test_key_ids_tell_keys_apart() -> None:
    ids = {ConsortiumKey.generate().key_id for _ in range(64)}
    assert len(ids) == 64


# ---------------------------------------------------------------------------------- key files


def test_write_key_file_creates_mode_0600_and_loads_back(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "consortium.key"
    key = ConsortiumKey.generate()
    write_key_file(path, key)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text() == key.to_text()
    assert load_key_file(path) == key


def test_write_key_file_never_overwrites(tmp_path: Path) -> None:
    path = tmp_path / "consortium.key"
    first = ConsortiumKey.generate()
    write_key_file(path, first)
    with pytest.raises(UserError, match="already exists") as info:
        write_key_file(path, ConsortiumKey.generate())
    assert str(path) in str(info.value)
    assert load_key_file(path) == first


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660, 0o620, 0o602, 0o610, 0o601])
def test_load_key_file_refuses_a_file_other_users_can_access(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "consortium.key"
    write_key_file(path, ConsortiumKey.generate())
    path.chmod(mode)
    with pytest.raises(UserError, match="too open") as info:
        load_key_file(path)
    assert f"chmod 600 {path}" in str(info.value)
    path.chmod(0o600)
    load_key_file(path)  # fixed as the message says
    path.chmod(0o400)
    load_key_file(path)  # read-only for the owner is fine too


def test_load_key_file_of_a_missing_file_says_where_to_get_one(tmp_path: Path) -> None:
    path = tmp_path / "nope.key"
    with pytest.raises(UserError, match="no consortium key at") as info:
        load_key_file(path)
    message = str(info.value)
    assert str(path) in message and "gossiplearn consortium create --out" in message


def test_load_key_file_names_the_file_when_its_content_is_bad(tmp_path: Path) -> None:
    path = tmp_path / "bad.key"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, key_text("/base16/", "ab" * 8).encode())
    os.close(fd)
    with pytest.raises(UserError, match="the key is 8 bytes") as info:
        load_key_file(path)
    assert str(path) in str(info.value)


def test_load_key_file_refuses_a_directory(tmp_path: Path) -> None:
    path = tmp_path / "dir.key"
    path.mkdir(mode=0o700)
    with pytest.raises(UserError, match=re.escape(str(path))):
        load_key_file(path)


# ---------------------------------------------------------------------------------- members


def peer_id() -> str:
    return Identity.generate().peer_id


def test_members_parse_accepts_peer_ids_with_names() -> None:
    a, b = peer_id(), peer_id()
    members = Members.parse({a: "Acme Corp", b: "Bolt"}, "peer.toml")
    assert dict(members) == {a: "Acme Corp", b: "Bolt"}
    assert members.restricted and len(members) == 2
    assert members.name_of(a) == "Acme Corp" and members.name_of(peer_id()) is None


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "12D3KooW",
        "not a peer id",
        "QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N",  # RSA-style (sha256) ID, not Ed25519
    ],
)
def test_members_parse_refuses_what_is_not_an_ed25519_peer_id(bad: str) -> None:
    with pytest.raises(UserError, match=r"^peer\.toml: .* is not a peer ID") as info:
        Members.parse({bad: "Acme"}, "peer.toml")
    assert "12D3KooW" in str(info.value)  # what a peer ID looks like


def test_members_parse_refuses_a_truncated_or_extended_peer_id() -> None:
    # (a changed digit is still a valid ID: an identity multihash has no checksum)
    good = peer_id()
    for bad in (good[:-1], good + "a", good.lower(), " " + good):
        with pytest.raises(UserError, match="is not a peer ID"):
            Members.parse({bad: "Acme"}, "peer.toml")


@pytest.mark.parametrize("space", [" ", "\n", "\t"])
def test_a_peer_id_with_trailing_space_is_refused_or_admits_that_peer(space: str) -> None:
    """A listed ID must never be one that no peer can match: that member would be refused."""
    good = peer_id()
    try:
        members = Members.parse({good + space: "Acme"}, "peer.toml")
    except UserError as exc:
        assert "is not a peer ID" in str(exc)
    else:
        assert members.admits(good)


@pytest.mark.parametrize("name", ["", "   ", "x" * (MAX_NAME + 1), 7, None, ["Acme"]])
def test_members_parse_refuses_bad_names(name: object) -> None:
    pid = peer_id()
    with pytest.raises(UserError, match="must be a non-empty string") as info:
        Members.parse({pid: name}, "peer.toml")
    assert pid in str(info.value) and str(MAX_NAME) in str(info.value)


def test_members_parse_accepts_the_longest_name() -> None:
    pid = peer_id()
    assert Members.parse({pid: "x" * MAX_NAME}, "w")[pid] == "x" * MAX_NAME


@pytest.mark.parametrize("table", [["a"], "a", 3])
def test_members_parse_refuses_what_is_not_a_table(table: object) -> None:
    with pytest.raises(UserError, match=r"^where: \[members\] must be a table"):
        Members.parse(table, "where")


def test_an_empty_member_list_admits_everyone() -> None:
    members = Members.parse({}, "peer.toml")
    assert not members.restricted
    for _ in range(5):
        assert members.admits(peer_id())
    assert Members().admits("anything at all")


def test_a_member_list_admits_exactly_its_members() -> None:
    a, b, stranger = peer_id(), peer_id(), peer_id()
    members = Members({a: "A", b: "B"})
    assert members.admits(a) and members.admits(b)
    assert not members.admits(stranger)
    assert not members.admits("")
