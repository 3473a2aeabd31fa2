"""The settings declaration, and what is made from it: checks, peer.toml, flags, README table."""

from __future__ import annotations

import math
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
import pytest

from gossiplearn.cli.main import START_FLAGS, start, start_overrides
from gossiplearn.errors import UserError
from gossiplearn.gossip.messages import ENCODINGS
from gossiplearn.peer.home.config import (
    COMPRESSIONS,
    DEFAULT_CONFIG_TEXT,
    SETTINGS,
    PeerConfig,
    build_config,
    main,
    readme_table,
    with_overrides,
)
from gossiplearn.peer.home.settings import (
    NonEmpty,
    OneOf,
    Range,
    Setting,
    Spec,
    declared,
    flag_usage,
    free_keys,
    render_readme_table,
    render_template,
    setting,
)

README = Path(__file__).resolve().parents[2] / "README.md"
REGENERATE = "python -m gossiplearn.peer.home.config --readme"

# Flags are a public interface: each keeps its name and its key (new ones may be added).
FLAGS_SINCE_0_1 = {
    "listen": "network.listen",
    "bootstrap": "network.bootstrap",
    "dial_timeout": "network.dial_timeout",
    "gossip_interval": "gossip.interval",
    "exchange_timeout": "gossip.exchange_timeout",
    "discovery_interval": "gossip.discovery_interval",
    "attempts": "gossip.attempts",
    "adopt_ratio": "gossip.adopt_ratio",
    "compression": "gossip.compression",
    "weight_decay": "training.weight_decay",
    "learning_rate": "training.learning_rate",
    "momentum": "training.momentum",
    "batch_size": "training.batch_size",
    "steps_per_second": "training.steps_per_second",
    "max_steps": "training.max_steps",
    "lr_schedule": "training.lr_schedule",
    "eval_interval": "training.eval_interval",
    "threads": "training.threads",
    "training": "training.enabled",
    "checkpoint_interval": "training.checkpoint_interval",
    "task": "task.name",
    "shard": "task.shard",
    "partition": "task.partition",
    "seed": "task.seed",
    "validation_fraction": "task.validation_fraction",
    "data": "task.data",
    "contract": "task.contract",
    "consortium_key": "security.consortium_key",
    "screening": "security.screening",
    "max_norm_ratio": "security.max_norm_ratio",
    "ban_strikes": "security.ban_strikes",
    "ban_window": "security.ban_window",
    "ban_seconds": "security.ban_seconds",
    "max_inbound_streams": "security.max_inbound_streams",
    "max_streams_per_peer": "security.max_streams_per_peer",
}


def by_key(dotted: str) -> Setting:
    return next(s for s in SETTINGS if s.dotted == dotted)


# ------------------------------------------------------------------------ the declaration


def test_readme_table_is_the_generated_one() -> None:
    text = README.read_text(encoding="utf-8")
    found = re.search(
        r"<!-- generated from .*?-->\n(.*?)<!-- end of the generated table -->", text, re.S
    )
    assert found, "README.md lost the markers around the configuration table"
    assert found.group(1) == readme_table(), (
        f"README.md's configuration table differs from the declarations: replace it with the "
        f"output of `{REGENERATE}`"
    )


def test_every_default_has_its_type_and_passes_its_check() -> None:
    for s in SETTINGS:
        if s.free:
            assert s.default is None
            continue
        if s.kind is tuple:
            assert all(isinstance(v, str) for v in s.default), s.dotted
        else:
            assert type(s.default) is s.kind, s.dotted  # 0 would not do for a float
        assert s.parse(s.default, "x") == s.default, s.dotted


def test_every_setting_says_what_it_does() -> None:
    for s in SETTINGS:
        assert s.spec.help and not s.spec.help.endswith("."), s.dotted  # a phrase
        assert "|" not in s.spec.help, s.dotted  # a Markdown table cell


def test_keys_and_flags_are_unique() -> None:
    dotted = [s.dotted for s in SETTINGS]
    assert len(set(dotted)) == len(dotted)
    flags = [s.flag for s in SETTINGS if s.flag]
    assert len(set(flags)) == len(flags)


def test_compressions_are_the_wire_encodings() -> None:
    assert ("none", *ENCODINGS) == COMPRESSIONS


def test_a_field_without_a_declaration_is_refused() -> None:
    @dataclass(frozen=True)
    class Section:
        declared_one: int = setting(1, "an integer")
        forgotten: int = 2

    @dataclass(frozen=True)
    class Root:
        section: Section = field(default_factory=Section)

    with pytest.raises(TypeError, match="forgotten"):
        declared(Root)


def test_a_new_section_is_one_dataclass() -> None:
    @dataclass(frozen=True)
    class PrivacyConfig:
        dp: bool = setting(False, "clip and noise each update", flag="--dp")
        delta: float = setting(1e-5, "the δ of (ε, δ)-DP", check=Range(0, 1, low_open=True))
        group_size: int = setting(4, "peers per secure sum", check=Range(2), template=False)
        extra: Mapping[str, Any] = free_keys(
            note=Spec("a note", kind=str, flag=False, template=False)
        )

    @dataclass(frozen=True)
    class Root:
        privacy: PrivacyConfig = field(default_factory=PrivacyConfig)

    rows = declared(Root)
    assert [s.dotted for s in rows] == [
        "privacy.dp",
        "privacy.delta",
        "privacy.group_size",
        "privacy.note",
    ]
    assert [s.flag for s in rows] == ["--dp", "--delta", "--group-size", None]
    template = render_template(rows, header="h")
    assert tomllib.loads(template) == {"privacy": {"dp": False, "delta": 1e-5}}
    assert "group_size" not in template
    table = render_readme_table(rows)
    assert "| `privacy.delta` | `--delta` | `1e-05` | a number in (0, 1) |" in table
    assert "| `privacy.note` | no flag | unset | a string | a note |" in table


# ------------------------------------------------------------------------ checks


@pytest.mark.parametrize(
    ("check", "noun", "good", "bad", "described"),
    [
        (Range(0, low_open=True), "number of seconds", [1e-9, 5, math.inf], [0, -1, math.nan],
         "a number of seconds > 0"),
        (Range(1), "integer", [1, 7], [0, -3], "an integer >= 1"),
        (Range(0, 1), "number", [0, 0.5], [1, -0.1, math.nan], "a number in [0, 1)"),
        (Range(0, zero="never ban"), "number", [0, 3], [-1], "a number >= 0 (0 = never ban)"),
        (Range(1, finite=True, zero="off"), "number", [0, 1, 9], [0.5, math.inf, math.nan],
         "0 (off) or a finite number >= 1"),
        (OneOf(("a", "b", "c")), "string", ["a", "c"], ["d", ""], "a, b or c"),
        (NonEmpty("multiaddr"), "list of strings", [("x",)], [()],
         "a list of strings with at least one multiaddr"),
    ],
)  # fmt: skip
def test_checks_accept_and_describe(
    check: Any, noun: str, good: list[Any], bad: list[Any], described: str
) -> None:
    assert all(check.accepts(v) for v in good)
    assert not any(check.accepts(v) for v in bad)
    assert check.describe(noun) == described


def test_no_number_check_accepts_nan() -> None:
    for s in SETTINGS:
        if s.kind is float and s.spec.check is not None:
            with pytest.raises(UserError, match=re.escape(s.dotted)):
                s.parse(math.nan, "peer.toml")


def test_a_bad_value_names_the_file_the_key_the_value_and_what_is_accepted() -> None:
    with pytest.raises(UserError) as info:
        build_config({"security": {"ban_seconds": -5}}, "/h/peer.toml")
    assert str(info.value) == (
        "/h/peer.toml: security.ban_seconds = -5 is not valid: "
        "expected a number of seconds >= 0 (0 = never ban)"
    )


def test_a_declared_task_key_is_checked_and_kept_in_params() -> None:
    cfg = build_config({"task": {"contract": "wine.toml", "target": 3}}, "peer.toml")
    assert cfg.task.params == {"contract": "wine.toml", "target": 3}  # others as they are
    with pytest.raises(UserError, match=r"task\.data = 3 is not valid: expected a string"):
        build_config({"task": {"data": 3}}, "peer.toml")


def test_an_unknown_key_gets_a_suggestion() -> None:
    with pytest.raises(UserError, match=r"unknown key 'atempts' in \[gossip\] \(did you mean "
                       r"'attempts'\?\); known: adopt_ratio, attempts"):  # fmt: skip
        build_config({"gossip": {"atempts": 2}}, "peer.toml")


# ------------------------------------------------------------------------ peer.toml template


def test_the_template_shows_every_setting_with_its_help_and_flag() -> None:
    lines = DEFAULT_CONFIG_TEXT.splitlines()
    for s in SETTINGS:
        line = next((ln for ln in lines if re.match(rf"(# )?{s.key} = ", ln)), None)
        assert line is not None, s.dotted
        assert line.startswith("# ") == (s.spec.example is not None), s.dotted
        assert s.flag is None or line.endswith(f"  # {flag_usage(s, markdown=False)}")
    assert all(len(line) <= 79 for line in lines if line.startswith("#"))


# ------------------------------------------------------------------------ flags


def parse_start(*args: str) -> dict[str, Any]:
    with start.make_context("start", list(args)) as ctx:
        params = dict(ctx.params)
    del params["home"], params["log_level"]
    return params


def test_the_flags_of_0_1_are_kept() -> None:
    assert {k: START_FLAGS[k].dotted for k in FLAGS_SINCE_0_1} == FLAGS_SINCE_0_1


def test_every_flag_is_an_option_of_start_typed_from_its_declaration() -> None:
    options = {p.name: p for p in start.params if isinstance(p, click.Option)}
    for name, s in START_FLAGS.items():
        option = options[name]
        assert option.opts == [s.flag]
        assert s.dotted in (option.help or "")
        if s.kind is bool:
            assert option.secondary_opts == [f"--no-{s.flag.removeprefix('--')}"]  # type: ignore[union-attr]
        assert option.multiple == (s.kind is tuple)
        if isinstance(s.spec.check, OneOf):
            assert isinstance(option.type, click.Choice)
            assert tuple(option.type.choices) == s.spec.check.choices
    assert set(options) == {*START_FLAGS, "home", "log_level"}


def test_flags_become_overrides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    flags = parse_start(
        "--no-training", "--listen", "/ip4/127.0.0.1/tcp/0", "--listen", "/ip6/::1/tcp/0",
        "--compression", "int8", "--gossip-interval", "2", "--contract", "wine.toml",
    )  # fmt: skip
    overrides = start_overrides(flags)
    assert overrides == {
        "training.enabled": False,
        "network.listen": ("/ip4/127.0.0.1/tcp/0", "/ip6/::1/tcp/0"),
        "gossip.compression": "int8",
        "gossip.interval": 2.0,
        "task.contract": str(tmp_path / "wine.toml"),  # relative to where start runs
    }
    cfg = with_overrides(PeerConfig(), overrides)
    assert (cfg.training.enabled, cfg.gossip.interval) == (False, 2.0)
    assert cfg.task.params == {"contract": str(tmp_path / "wine.toml")}


def test_no_flags_no_overrides() -> None:
    assert start_overrides(parse_start()) == {}


def test_a_bad_choice_is_refused_by_click() -> None:
    with pytest.raises(click.BadParameter):
        parse_start("--compression", "zip")


def test_module_prints_the_table_and_the_template(capsys: pytest.CaptureFixture[str]) -> None:
    main(["--readme"])
    assert capsys.readouterr().out == readme_table()
    main(["--template"])
    assert capsys.readouterr().out == DEFAULT_CONFIG_TEXT
