"""The home folder (peer/home/home.py): its layout, its lock, paths in peer.toml, init."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gossiplearn.errors import UserError
from gossiplearn.peer.home.config import PeerConfig, with_overrides
from gossiplearn.peer.home.home import Home, init_home


@pytest.fixture
def home(tmp_path: Path) -> Home:
    home = Home(tmp_path / "h")
    home.init()
    return home


def test_the_layout(tmp_path: Path) -> None:
    home = Home(tmp_path)
    names = {
        home.config_file: "peer.toml",
        home.key_file: "identity.key",
        home.lock_file: "peer.lock",
        home.address_book: "peers.json",
        home.model_file: "model.glm",
        home.contract_copy: "contract.toml",
        home.status_socket: "status.sock",
        home.model_socket: "model.sock",
    }
    assert all(path == tmp_path / name for path, name in names.items())
    assert str(home) == str(tmp_path)


def test_init_creates_a_private_home_once(tmp_path: Path) -> None:
    first = init_home(tmp_path / "h")
    assert first.created_key and first.created_config
    assert (tmp_path / "h").stat().st_mode & 0o777 == 0o700
    again = Home(tmp_path / "h").init()
    assert not again.created_key and not again.created_config
    assert again.peer_id == first.peer_id == Home(tmp_path / "h").identity().peer_id


def test_a_home_without_identity_says_to_run_init(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"has no identity yet; run `gossiplearn init --home"):
        Home(tmp_path).identity()


def test_one_peer_per_home_and_stale_temporaries_go_with_the_lock(home: Home) -> None:
    left = [
        home.path / f".{name}.999.tmp"
        for name in ("checkpoint.glc", "model.glm", "peers.json", "contract.toml")
    ]
    for tmp in left:
        tmp.write_bytes(b"half written by a killed peer")
    other = home.path / ".peer.toml.999.tmp"  # a `members` edit may be under way: not ours
    other.write_bytes(b"")
    with home.lock():
        assert not any(tmp.exists() for tmp in left) and other.exists()
        assert home.lock_file.read_text() != ""
        with pytest.raises(UserError, match=r"another peer .* is already running"), home.lock():
            pass
    with home.lock():  # released
        pass


def test_paths_in_peer_toml_are_relative_to_the_home(home: Home, tmp_path: Path) -> None:
    absolute = tmp_path / "elsewhere.csv"
    config = with_overrides(
        PeerConfig(), {"task.contract": "task.toml", "task.data": str(absolute), "task.x": "y"}
    )
    assert home.contract(config) == home.path / "task.toml"
    assert home.task_params(config) == {
        "contract": str(home.path / "task.toml"),
        "data": str(absolute),
        "x": "y",
    }
    assert home.contract(PeerConfig()) is None


def test_the_contract_copy_follows_the_configured_contract(home: Home) -> None:
    contract = home.path / "task.toml"
    contract.write_text("v1")
    config = with_overrides(PeerConfig(), {"task.contract": "task.toml"})
    home.keep_contract(config)
    assert home.contract_copy.read_text() == "v1"
    contract.write_text("v2")
    home.keep_contract(config)
    assert home.contract_copy.read_text() == "v2"
    started_from_copy = with_overrides(PeerConfig(), {"task.contract": "contract.toml"})
    home.keep_contract(started_from_copy)  # the copy itself: nothing to do
    assert home.contract_copy.read_text() == "v2"


def test_members_are_read_and_edited_in_peer_toml(home: Home) -> None:
    peer_id = home.identity().peer_id
    assert not home.members()
    assert home.add_member(peer_id, "Us")
    assert dict(home.members()) == {peer_id: "Us"}
    assert home.config_version() is not None
    assert home.remove_member("Us") == peer_id


def test_importing_the_home_does_not_import_torch_or_libp2p() -> None:
    code = (
        "import sys, gossiplearn.peer.home.home\n"
        "sys.exit(any(m.split('.')[0] in ('torch', 'libp2p') for m in sys.modules))"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
