"""Editing [members] in peer.toml, and the validation of [security] and [members]."""

from __future__ import annotations

from pathlib import Path

import pytest

from gossiplearn.crypto.identity import Identity
from gossiplearn.errors import UserError
from gossiplearn.peer.home.config import (
    CONFIG_FILE_NAME,
    DEFAULT_CONFIG_TEXT,
    SecurityConfig,
    load_config_file,
)
from gossiplearn.peer.home.home import Home


@pytest.fixture
def home(tmp_path: Path) -> Home:
    home = Home(tmp_path / "h")
    home.init()
    return home


def config_text(home: Home) -> str:
    return (home.config_file).read_text(encoding="utf-8")


def new_id() -> str:
    return Identity.generate().peer_id


# ---------------------------------------------------------------------------------- editing


def test_add_keeps_the_comments_and_the_file_still_loads(home: Home) -> None:
    a, b = new_id(), new_id()
    assert home.add_member(a, "Acme Corp")
    assert home.add_member(b, "  Bolt  ")  # stored trimmed
    text = config_text(home)
    assert text.startswith(DEFAULT_CONFIG_TEXT)  # every comment and setting, in place
    cfg = load_config_file(home.config_file)
    assert dict(cfg.members) == {a: "Acme Corp", b: "Bolt"}
    assert cfg.security == SecurityConfig()  # the rest of the file is untouched
    assert dict(home.members()) == {a: "Acme Corp", b: "Bolt"}


def test_add_then_remove_restores_the_file(home: Home) -> None:
    a = new_id()
    home.add_member(a, "Acme")
    assert home.remove_member(a) == a
    assert config_text(home) == DEFAULT_CONFIG_TEXT


def test_adding_twice_renames(home: Home) -> None:
    a = new_id()
    assert home.add_member(a, "Acme") is True
    assert home.add_member(a, "Acme Corp") is False
    assert dict(home.members()) == {a: "Acme Corp"}
    assert config_text(home).count(a) == 1


def test_remove_by_peer_id_and_by_name(home: Home) -> None:
    a, b, c = new_id(), new_id(), new_id()
    for pid, name in ((a, "Acme"), (b, "Bolt"), (c, "Crane")):
        home.add_member(pid, name)
    assert home.remove_member(b) == b
    assert home.remove_member("Crane") == c
    assert dict(home.members()) == {a: "Acme"}
    assert text_has_comments(home)


def text_has_comments(home: Home) -> bool:
    return '# "12D3KooW..." = "Acme Corp"' in config_text(home)


def test_removing_an_unknown_member_is_a_user_error(home: Home) -> None:
    home.add_member(new_id(), "Acme")
    before = config_text(home)
    with pytest.raises(UserError, match="'Nobody' is not in the member list") as info:
        home.remove_member("Nobody")
    assert str(home.config_file) in str(info.value)
    with pytest.raises(UserError, match="is not in the member list"):
        home.remove_member(new_id())
    assert config_text(home) == before


def test_an_ambiguous_name_is_refused(home: Home) -> None:
    a, b = new_id(), new_id()
    home.add_member(a, "Acme")
    home.add_member(b, "Acme")
    before = config_text(home)
    with pytest.raises(UserError, match=r"2 members are named 'Acme'.*by its peer ID"):
        home.remove_member("Acme")
    assert config_text(home) == before
    assert home.remove_member(a) == a  # by ID it is not ambiguous
    assert home.remove_member("Acme") == b  # and now the name is unique


@pytest.mark.parametrize(
    "bad", ["12D3KooWnotanid", "Acme", "", "12D3KooWJWTvjTP9cLktcU2g7QLNbJeqHqaimrq9Tatk742pk8"]
)
def test_an_invalid_peer_id_is_refused_and_the_file_is_unchanged(home: Home, bad: str) -> None:
    home.add_member(new_id(), "Acme")
    path = home.config_file
    before = path.read_bytes()
    with pytest.raises(UserError, match="is not a peer ID"):
        home.add_member(bad, "Bolt")
    assert path.read_bytes() == before
    assert sorted(p.name for p in home.path.iterdir()) == sorted(
        ["identity.key", CONFIG_FILE_NAME]
    )  # no temporary file left behind


@pytest.mark.parametrize("name", ["", "   ", "x" * 65])
def test_an_invalid_name_is_refused_and_the_file_is_unchanged(home: Home, name: str) -> None:
    path = home.config_file
    before = path.read_bytes()
    with pytest.raises(UserError, match="non-empty string"):
        home.add_member(new_id(), name)
    assert path.read_bytes() == before


def test_an_edit_that_would_not_load_is_refused(home: Home) -> None:
    # a file that is already invalid elsewhere: the edit must not write it back
    path = home.config_file
    path.write_text(DEFAULT_CONFIG_TEXT.replace("ban_strikes = 3", "ban_strikes = 0"))
    before = path.read_bytes()
    with pytest.raises(UserError, match=r"security\.ban_strikes"):
        home.add_member(new_id(), "Acme")
    assert path.read_bytes() == before


def test_editing_outside_a_home_says_to_run_init(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="gossiplearn init"):
        Home(tmp_path / "missing").add_member(new_id(), "Acme")


def test_a_home_without_peer_toml_gets_a_members_table(home: Home) -> None:
    (home.config_file).unlink()
    a = new_id()
    home.add_member(a, "Acme")
    assert dict(load_config_file(home.config_file).members) == {a: "Acme"}


def test_a_file_that_is_not_toml_is_refused(home: Home) -> None:
    path = home.config_file
    path.write_text("[members\n")
    with pytest.raises(UserError, match="is not valid TOML"):
        home.add_member(new_id(), "Acme")
    assert path.read_text() == "[members\n"


# ---------------------------------------------------------------------------------- config


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / CONFIG_FILE_NAME
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("line", "named"),
    [
        (
            "max_norm_ratio = 0.5",
            "security.max_norm_ratio = 0.5 is not valid: expected a number > 1",
        ),
        ("max_norm_ratio = 1", "security.max_norm_ratio"),
        ('max_norm_ratio = "10"', "expected a number"),
        ("ban_strikes = 0", "security.ban_strikes = 0"),
        ("ban_strikes = 2.5", "expected an integer"),
        ("ban_window = 0", "security.ban_window"),
        ("ban_seconds = -1", "security.ban_seconds"),
        ("max_inbound_streams = 0", "security.max_inbound_streams"),
        ("max_streams_per_peer = 0", "security.max_streams_per_peer"),
        ('screening = "yes"', "expected true or false"),
        ("consortium_key = 7", "expected a string"),
        ("psk = 'x'", "unknown key 'psk' in [security]"),
    ],
)
def test_security_keys_are_validated(tmp_path: Path, line: str, named: str) -> None:
    path = write(tmp_path, f"[security]\n{line}\n")
    with pytest.raises(UserError) as info:
        load_config_file(path)
    message = str(info.value)
    assert message.startswith(str(path)) and named in message


def test_an_unknown_security_key_lists_the_known_ones(tmp_path: Path) -> None:
    path = write(tmp_path, "[security]\nmax_norm = 3\n")
    with pytest.raises(UserError, match="max_norm_ratio") as info:
        load_config_file(path)
    assert "unknown key 'max_norm'" in str(info.value)


def test_security_keys_are_read(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[security]\nconsortium_key = "c.key"\nscreening = false\nmax_norm_ratio = 4\n'
        "ban_strikes = 5\nban_window = 10\nban_seconds = 0\n"
        "max_inbound_streams = 8\nmax_streams_per_peer = 2\n",
    )
    assert load_config_file(path).security == SecurityConfig(
        consortium_key="c.key",
        screening=False,
        max_norm_ratio=4.0,
        ban_strikes=5,
        ban_window=10.0,
        ban_seconds=0.0,
        max_inbound_streams=8,
        max_streams_per_peer=2,
    )


def test_a_bad_peer_id_in_members_is_refused_naming_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, '[members]\n"12D3KooWnope" = "Acme"\n')
    with pytest.raises(UserError, match="is not a peer ID") as info:
        load_config_file(path)
    assert str(info.value).startswith(f"{path}: '12D3KooWnope'")


def test_a_bad_member_name_is_refused_naming_the_file(tmp_path: Path) -> None:
    pid = new_id()
    path = write(tmp_path, f'[members]\n"{pid}" = 3\n')
    with pytest.raises(UserError, match="non-empty string") as info:
        load_config_file(path)
    assert str(info.value).startswith(str(path)) and pid in str(info.value)


def test_members_are_read(tmp_path: Path) -> None:
    a, b = new_id(), new_id()
    path = write(tmp_path, f'[members]\n"{a}" = "Acme"\n{b} = "Bolt"\n')
    members = load_config_file(path).members
    assert dict(members) == {a: "Acme", b: "Bolt"} and members.restricted
    assert not load_config_file(write(tmp_path, "[members]\n")).members.restricted
