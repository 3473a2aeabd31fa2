"""Peer configuration: defaults, peer.toml, flags, and errors that say what to fix."""

from __future__ import annotations

import sys
from pathlib import Path

import platformdirs
import pytest

from gossiplearn.errors import UserError
from gossiplearn.peer.home.config import (
    CONFIG_FILE_NAME,
    DEFAULT_CONFIG_TEXT,
    HOME_ENV,
    GossipConfig,
    PeerConfig,
    build_config,
    load_config_file,
    resolve_home,
    with_overrides,
)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / CONFIG_FILE_NAME
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults() -> None:
    cfg = PeerConfig()
    assert cfg.network.listen == ("/ip4/0.0.0.0/tcp/7701",)
    assert cfg.network.bootstrap == ()
    assert cfg.gossip.interval == 1.0
    assert cfg.gossip.attempts == 3
    assert cfg.training.enabled is True
    assert cfg.training.batch_size == 32
    assert (cfg.task.name, cfg.task.shard, cfg.task.partition) == ("", "1/1", "iid")
    assert cfg.task.params == {}


def test_default_config_text_gives_the_defaults(tmp_path: Path) -> None:
    assert load_config_file(write(tmp_path, DEFAULT_CONFIG_TEXT)) == PeerConfig()


def test_missing_file_gives_the_defaults(tmp_path: Path) -> None:
    assert load_config_file(tmp_path / "nowhere" / CONFIG_FILE_NAME) == PeerConfig()


def test_file_values_override_defaults(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        [network]
        listen = "/ip4/127.0.0.1/tcp/0"
        bootstrap = ["/ip4/10.0.0.1/tcp/7701/p2p/12D3KooWabc"]
        [gossip]
        interval = 2          # an integer is fine for a number of seconds
        [training]
        enabled = false
        """,
    )
    cfg = load_config_file(path)
    assert cfg.network.listen == ("/ip4/127.0.0.1/tcp/0",)  # a single string becomes a list
    assert cfg.network.bootstrap == ("/ip4/10.0.0.1/tcp/7701/p2p/12D3KooWabc",)
    assert cfg.gossip.interval == 2.0
    assert isinstance(cfg.gossip.interval, float)
    assert cfg.gossip.exchange_timeout == GossipConfig().exchange_timeout
    assert cfg.training.enabled is False


def test_unknown_section_is_named(tmp_path: Path) -> None:
    path = write(tmp_path, "[gosip]\ninterval = 1.0\n")
    with pytest.raises(UserError, match=r"unknown section \[gosip\]") as info:
        load_config_file(path)
    assert str(path) in str(info.value)
    assert "[gossip]" in str(info.value)  # what is known


def test_unknown_key_is_named(tmp_path: Path) -> None:
    path = write(tmp_path, "[gossip]\nintervall = 1.0\n")
    with pytest.raises(UserError, match=r"unknown key 'intervall' in \[gossip\]") as info:
        load_config_file(path)
    assert "interval" in str(info.value).split("known:")[1]


def test_a_section_must_be_a_table(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"\[gossip\] must be a table"):
        load_config_file(write(tmp_path, 'gossip = "fast"\n'))


@pytest.mark.parametrize(
    ("text", "key", "kind"),
    [
        ('[gossip]\ninterval = "fast"', "gossip.interval", "a number"),
        ("[gossip]\ninterval = true", "gossip.interval", "a number"),
        ("[gossip]\nattempts = 2.5", "gossip.attempts", "an integer"),
        ("[gossip]\nattempts = true", "gossip.attempts", "an integer"),
        ("[training]\nenabled = 1", "training.enabled", "true or false"),
        ("[network]\nlisten = [1, 2]", "network.listen", "a list of strings"),
        ("[network]\nbootstrap = 5", "network.bootstrap", "a list of strings"),
        ("[task]\nname = 3", "task.name", "a string"),
        ("[task]\nseed = 0.5", "task.seed", "an integer"),
    ],
)
def test_wrong_type_names_key_and_expected_kind(
    tmp_path: Path, text: str, key: str, kind: str
) -> None:
    path = write(tmp_path, text + "\n")
    with pytest.raises(UserError) as info:
        load_config_file(path)
    message = str(info.value)
    assert key in message
    assert f"expected {kind}" in message
    assert str(path) in message


@pytest.mark.parametrize(
    ("text", "key", "accepted"),
    [
        ("[gossip]\ninterval = 0", "gossip.interval", "> 0"),
        ("[gossip]\ninterval = -1.5", "gossip.interval", "> 0"),
        ("[gossip]\ninterval = nan", "gossip.interval", "> 0"),
        ("[gossip]\nexchange_timeout = 0.0", "gossip.exchange_timeout", "> 0"),
        ("[gossip]\nattempts = 0", "gossip.attempts", ">= 1"),
        ("[gossip]\nadopt_ratio = 0.5", "gossip.adopt_ratio", "0 (never adopt) or a finite number"),
        ("[gossip]\nadopt_ratio = -1", "gossip.adopt_ratio", ">= 1"),
        ("[gossip]\nadopt_ratio = inf", "gossip.adopt_ratio", "a finite number >= 1"),
        ("[training]\ncheckpoint_interval = inf", "training.checkpoint_interval", "finite"),
        ("[network]\nlisten = []", "network.listen", "at least one multiaddr"),
        ("[training]\nmomentum = 1", "training.momentum", "[0, 1)"),
        ("[training]\nbatch_size = 0", "training.batch_size", ">= 1"),
        ("[training]\nmax_steps = -1", "training.max_steps", ">= 0"),
        ("[task]\nvalidation_fraction = 1.0", "task.validation_fraction", "[0, 1)"),
    ],
)
def test_rule_violations_name_key_and_what_is_accepted(
    tmp_path: Path, text: str, key: str, accepted: str
) -> None:
    with pytest.raises(UserError, match="is not valid") as info:
        load_config_file(write(tmp_path, text + "\n"))
    assert key in str(info.value)
    assert accepted in str(info.value)


def test_invalid_toml_is_a_user_error(tmp_path: Path) -> None:
    path = write(tmp_path, "[gossip\ninterval = \n")
    with pytest.raises(UserError, match="not valid TOML") as info:
        load_config_file(path)
    assert str(path) in str(info.value)


def test_extra_task_keys_go_to_params(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        [task]
        name = "tabular"
        data = "/srv/our.csv"
        target = "label"
        columns = ["age", "income"]
        hidden = 16
        """,
    )
    cfg = load_config_file(path)
    assert cfg.task.name == "tabular"
    assert cfg.task.params == {
        "data": "/srv/our.csv",
        "target": "label",
        "columns": ["age", "income"],
        "hidden": 16,
    }


def test_flags_beat_the_file_and_the_file_beats_defaults(tmp_path: Path) -> None:
    path = write(tmp_path, "[gossip]\ninterval = 2.0\nattempts = 5\n[task]\ndata = 'a.csv'\n")
    cfg = with_overrides(
        load_config_file(path),
        {
            "gossip.interval": 0.5,  # flag given: wins
            "gossip.attempts": None,  # flag not given: the file's value stays
            "network.bootstrap": (),  # empty repeatable flag: not given
            "network.listen": ("/ip4/127.0.0.1/tcp/0", "/ip6/::1/tcp/0"),
            "task.target": "label",  # merged into the file's params
        },
    )
    assert cfg.gossip.interval == 0.5
    assert cfg.gossip.attempts == 5
    assert cfg.gossip.discovery_interval == GossipConfig().discovery_interval
    assert cfg.network.bootstrap == ()
    assert cfg.network.listen == ("/ip4/127.0.0.1/tcp/0", "/ip6/::1/tcp/0")
    assert cfg.task.params == {"data": "a.csv", "target": "label"}


def test_bad_flags_are_reported_as_command_line() -> None:
    with pytest.raises(UserError, match=r"^command line: gossip\.interval = 0"):
        with_overrides(PeerConfig(), {"gossip.interval": 0})
    with pytest.raises(UserError, match="unknown key 'speed'"):
        with_overrides(PeerConfig(), {"training.speed": 3})


def test_build_config_does_not_change_its_base() -> None:
    base = build_config({"task": {"hidden": 8}}, "x")
    changed = build_config({"task": {"hidden": 16}, "gossip": {"interval": 3}}, "y", base)
    assert base.task.params == {"hidden": 8}
    assert base.gossip.interval == 1.0
    assert changed.task.params == {"hidden": 16}


def test_resolve_home_prefers_the_flag(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(HOME_ENV, str(tmp_path / "from-env"))
    assert resolve_home(tmp_path / "from-flag") == (tmp_path / "from-flag").resolve()


def test_resolve_home_then_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(HOME_ENV, str(tmp_path / "from-env"))
    assert resolve_home(None) == (tmp_path / "from-env").resolve()
    assert resolve_home("") == (tmp_path / "from-env").resolve()


def test_resolve_home_expands_the_user(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv(HOME_ENV, "~/peer")
    assert resolve_home(None) == (tmp_path / "peer").resolve()
    assert resolve_home("~/other") == (tmp_path / "other").resolve()


def test_resolve_home_falls_back_to_the_platform_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(HOME_ENV, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    home = resolve_home(None)
    assert home == Path(platformdirs.user_data_dir("gossiplearn", appauthor=False))
    assert home.name == "gossiplearn"
    if sys.platform.startswith("linux"):
        assert home == tmp_path / "data" / "gossiplearn"
    monkeypatch.setenv(HOME_ENV, "")  # set but empty: as if unset
    assert resolve_home(None) == home


def test_a_file_that_is_not_utf8_is_a_user_error(tmp_path: Path) -> None:
    path = tmp_path / CONFIG_FILE_NAME
    path.write_bytes("# café\n[gossip]\ninterval = 2.0\n".encode("latin-1"))
    with pytest.raises(UserError) as info:
        load_config_file(path)
    assert str(path) in str(info.value)


def test_an_integer_too_large_for_a_float_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"gossip\.interval"):
        load_config_file(write(tmp_path, "[gossip]\ninterval = 1" + "0" * 400 + "\n"))


def test_a_cosine_schedule_needs_max_steps_from_any_source(tmp_path: Path) -> None:
    path = write(tmp_path, "[training]\nlr_schedule = 'cosine'\n")
    with pytest.raises(UserError, match="max_steps"):
        with_overrides(load_config_file(path), {})
    cfg = with_overrides(load_config_file(path), {"training.max_steps": 300})
    assert (cfg.training.lr_schedule, cfg.training.max_steps) == ("cosine", 300)
    with pytest.raises(UserError, match="constant or cosine"):
        with_overrides(PeerConfig(), {"training.lr_schedule": "linear"})
