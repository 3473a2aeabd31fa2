"""Peer configuration: the peer's home, ``peer.toml``, and command-line overrides.

Each setting is declared once, below (``[privacy]`` in ``privacy.py``), as a field of its
section's dataclass (``setting(...)``: default, check, help, flag; see ``settings.py``). The
checks, the default peer.toml (``DEFAULT_CONFIG_TEXT``), the ``start`` command's flags and
README.md's configuration table are all made from these declarations. To add a setting, add a
field; to add a section, add a dataclass of such fields and a field of ``PeerConfig`` named as
the section.

Precedence: command-line flag > peer.toml > declared default. Every declared key with a flag can
be given as that flag; ``[members]`` has its own commands, and ``[task]``'s undeclared keys
(``params``, for custom tasks) only the file. Validation errors are ``UserError``s that name the
key (and the file, or "command line"), the bad value, and what is accepted.
"""

from __future__ import annotations

import argparse
import os
import sys
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from difflib import get_close_matches
from pathlib import Path
from typing import Any

import platformdirs

from gossiplearn.crypto.consortium import Members
from gossiplearn.errors import UserError
from gossiplearn.peer.home.privacy import PrivacyConfig, check_privacy
from gossiplearn.peer.home.settings import (
    NonEmpty,
    OneOf,
    Range,
    Setting,
    Spec,
    comment,
    declared,
    free_field,
    free_keys,
    render_readme_table,
    render_template,
    sections,
    setting,
)

CONFIG_FILE_NAME = "peer.toml"
HOME_ENV = "GOSSIPLEARN_HOME"
LR_SCHEDULES = ("constant", "cosine")
COMPRESSIONS = ("none", "fp16", "bf16", "int8")  # "none" + gossip.messages.ENCODINGS (tested)

SECONDS = "seconds"
POSITIVE = Range(0, low_open=True)
AT_LEAST_1 = Range(1)
FRACTION = Range(0, 1)  # [0, 1)


def resolve_home(home: str | os.PathLike[str] | None) -> Path:
    """``--home``, else ``$GOSSIPLEARN_HOME``, else the platform's user data directory."""
    if home:
        return Path(home).expanduser().resolve()
    env = os.environ.get(HOME_ENV)
    if env:
        return Path(env).expanduser().resolve()
    return Path(platformdirs.user_data_dir("gossiplearn", appauthor=False))


@dataclass(frozen=True)
class NetworkConfig:
    listen: tuple[str, ...] = setting(
        ("/ip4/0.0.0.0/tcp/7701",),
        "multiaddrs to listen on (the default: port 7701 on every interface); "
        "`/tcp/0` picks a free port",
        check=NonEmpty("multiaddr"),
    )
    bootstrap: tuple[str, ...] = setting(
        (),
        "members to join through, each a multiaddr ending in `/p2p/<peer id>` (printed by "
        "their `gossiplearn start`); redialled with backoff while no known peer is reachable",
    )
    dial_timeout: float = setting(
        10.0,
        "seconds a connection may take to open, handshakes included",
        check=POSITIVE,
        unit=SECONDS,
    )


@dataclass(frozen=True)
class GossipConfig:
    interval: float = setting(
        1.0,
        "mean seconds between the exchanges this peer starts (each wait is drawn between 0.5 "
        "and 1.5 times it)",
        check=POSITIVE,
        unit=SECONDS,
        flag="--gossip-interval",
    )
    exchange_timeout: float = setting(
        60.0,
        "seconds an exchange, or a request for a peer's list of peers, may take before it is "
        "abandoned (its steps have tighter deadlines of their own)",
        check=POSITIVE,
        unit=SECONDS,
    )
    discovery_interval: float = setting(
        5.0,
        "mean seconds between requests for a neighbour's list of peers (every second or so "
        "while this peer knows fewer than 8)",
        check=POSITIVE,
        unit=SECONDS,
    )
    attempts: int = setting(
        3,
        "neighbours asked for an exchange per round, at most: the next is asked only when one "
        "declines (busy, closing or incompatible); a completed or failed exchange ends the round",
        check=AT_LEAST_1,
    )
    adopt_ratio: float = setting(
        4.0,
        "until its first completed exchange, this peer adopts outright a model with more than "
        "this many times its own training behind it, if that model does as well on local "
        "validation data; otherwise models are averaged",
        check=Range(1, finite=True, zero="never adopt"),
    )
    compression: str = setting(
        "none",
        "how our model travels: `none` (exact), `fp16`, `bf16` (2 bytes a value) or `int8` "
        "(1 byte, with error feedback); the accuracy cost of each is in docs/benchmarks.md",
        check=OneOf(COMPRESSIONS),
    )


@dataclass(frozen=True)
class TrainingConfig:
    learning_rate: float = setting(
        0.05, "SGD learning rate (with `cosine`, the starting rate)", check=POSITIVE
    )
    momentum: float = setting(0.9, "SGD momentum", check=FRACTION)
    weight_decay: float = setting(0.0, "SGD weight decay (L2 penalty)", check=Range(0))
    batch_size: int = setting(32, "samples per SGD step", check=AT_LEAST_1)
    steps_per_second: float = setting(
        20.0,
        "pace of local SGD steps, in steps a second",
        check=Range(0, zero="as fast as the CPU allows"),
    )
    max_steps: int = setting(
        0,
        "stop training after this many local steps; gossip goes on",
        check=Range(0, zero="never stop"),
    )
    lr_schedule: str = setting(
        "constant",
        "the learning rate over the steps: `constant`, or `cosine`: it decays from "
        "`learning_rate` to 0 at `max_steps` (which it needs), so the peers' models settle "
        "together (docs/benchmarks.md)",
        check=OneOf(LR_SCHEDULES),
    )
    eval_interval: float = setting(
        2.0,
        "seconds between evaluations on the local validation data (what `gossiplearn status` "
        "shows)",
        check=POSITIVE,
        unit=SECONDS,
    )
    threads: int = setting(1, "torch CPU threads of this peer's process", check=AT_LEAST_1)
    enabled: bool = setting(
        True,
        "train on local data; `false`: only average the models of others",
        flag="--training",
    )
    checkpoint_interval: float = setting(
        30.0,
        "seconds between checkpoints of the model, optimiser state, counters and metrics "
        "history; `start` resumes from the newest valid one",
        check=Range(0, finite=True, zero="only at shutdown"),
        unit=SECONDS,
    )


PATH_HELP = "relative to the home (as a flag: to the working directory)"


@dataclass(frozen=True)
class TaskConfig:
    name: str = setting(
        "",
        "the task: `digits`, `tabular` or `package.module:function`; "
        '`""`: `tabular` with a contract, else `digits`',
        flag="--task",
    )
    shard: str = setting("1/1", "digits: this member's shard, `I/N`")
    partition: str = setting("iid", "digits: how shards are drawn, `iid` or `dirichlet:ALPHA`")
    seed: int = setting(0, "data seed, the same on every member (digits: shards are disjoint)")
    validation_fraction: float = setting(
        0.2, "share of local data held out for validation", check=FRACTION
    )
    # Every other [task] key, for the task (a custom task finds them in ``options.params``).
    params: Mapping[str, Any] = free_keys(
        contract=Spec(
            "tabular: the task contract file every member shares (`gossiplearn task init` "
            f"drafts one); {PATH_HELP}",
            kind=str,
            example="task.toml",
            path=True,
        ),
        data=Spec(
            f"tabular: this member's data, a CSV or Parquet file; {PATH_HELP}",
            kind=str,
            example="/path/to/our_data.csv",
            path=True,
        ),
    )


@dataclass(frozen=True)
class SecurityConfig:
    consortium_key: str = setting(
        "",
        "the consortium's key file (libp2p private network): only holders of the same key "
        "can connect; `gossiplearn consortium create --out FILE` makes one (mode 0600); "
        f'{PATH_HELP}; `""`: an open network',
        example="consortium.key",
        path=True,
    )
    screening: bool = setting(
        True,
        "screen received models: refuse those whose norm is far off (`max_norm_ratio`), "
        "clip those unusually far from ours",
    )
    max_norm_ratio: float = setting(
        10.0,
        "refuse a received model whose norm is more than this many times above or below the "
        "usual (the median norm of recently merged models)",
        check=Range(1, low_open=True),
    )
    ban_strikes: int = setting(
        3,
        "offences (invalid data, a stalled transfer, too many streams) within `ban_window` "
        "that get a peer banned",
        check=AT_LEAST_1,
    )
    ban_window: float = setting(
        60.0, "seconds over which a peer's offences are counted", check=POSITIVE, unit=SECONDS
    )
    ban_seconds: float = setting(
        300.0, "how long a ban lasts", check=Range(0, zero="never ban"), unit=SECONDS
    )
    max_inbound_streams: int = setting(
        32,
        "concurrent inbound gossip streams, all peers together; more are refused",
        check=AT_LEAST_1,
    )
    max_streams_per_peer: int = setting(
        4,
        "concurrent inbound gossip streams from one peer; more are refused, as an offence",
        check=AT_LEAST_1,
    )


@dataclass(frozen=True)
class PeerConfig:
    """The whole configuration; each field is a section of peer.toml, named as there."""

    network: NetworkConfig = field(default_factory=NetworkConfig)
    gossip: GossipConfig = field(default_factory=GossipConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    security: SecurityConfig = field(default_factory=SecurityConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)  # declared in privacy.py
    members: Members = field(default_factory=Members)  # not settings: Members.parse checks it


SETTINGS: tuple[Setting, ...] = declared(PeerConfig)
SECTIONS: dict[str, type] = sections(PeerConfig)
_BY_KEY: dict[str, dict[str, Setting]] = {
    name: {s.key: s for s in SETTINGS if s.section == name} for name in SECTIONS
}


def build_config(data: Mapping[str, Any], where: str, base: PeerConfig | None = None) -> PeerConfig:
    """Apply a nested mapping (as parsed from TOML) on top of ``base`` (default: defaults)."""
    cfg = base or PeerConfig()
    for section, values in data.items():
        if section not in SECTIONS:
            known_sections = ", ".join(f"[{s}]" for s in SECTIONS)
            raise UserError(f"{where}: unknown section [{section}]; known: {known_sections}")
        if not isinstance(values, Mapping):
            raise UserError(f"{where}: [{section}] must be a table")
        if section == "members":
            cfg = replace(cfg, members=Members.parse(values, where))
            continue
        current = getattr(cfg, section)
        free = free_field(SECTIONS[section])
        updates: dict[str, Any] = {}
        extra: dict[str, Any] = {}
        for key, value in values.items():
            declared_key = _BY_KEY[section].get(key)
            if declared_key is not None and not declared_key.free:
                updates[key] = declared_key.parse(value, where)
            elif free is not None:
                extra[key] = value if declared_key is None else declared_key.parse(value, where)
            else:
                raise UserError(_unknown_key(where, section, key))
        if extra:
            assert free is not None
            updates[free] = {**getattr(current, free), **extra}
        cfg = replace(cfg, **{section: replace(current, **updates)})
    return cfg


def _unknown_key(where: str, section: str, key: str) -> str:
    known = sorted(_BY_KEY[section])
    guess = get_close_matches(key, known, n=1)
    hint = f" (did you mean {guess[0]!r}?)" if guess else ""
    return f"{where}: unknown key {key!r} in [{section}]{hint}; known: {', '.join(known)}"


def load_config_file(path: Path) -> PeerConfig:
    """Read peer.toml (defaults if it does not exist)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return PeerConfig()
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise UserError(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"{path} is not valid TOML: {exc}") from None
    return build_config(data, str(path))


def with_overrides(cfg: PeerConfig, overrides: Mapping[str, Any]) -> PeerConfig:
    """Apply dotted-key overrides from flags (``{"gossip.interval": 0.5}``); None is ignored.
    Then check the rules that tie keys together (the final configuration)."""
    nested: dict[str, dict[str, Any]] = {}
    for dotted, value in overrides.items():
        if value is None or value == ():
            continue
        section, _, key = dotted.partition(".")
        nested.setdefault(section, {})[key] = list(value) if isinstance(value, tuple) else value
    return check_combined(build_config(nested, "command line", cfg))


def check_combined(cfg: PeerConfig) -> PeerConfig:
    """Rules between keys, once every source is applied; returns ``cfg``."""
    if cfg.training.lr_schedule == "cosine" and cfg.training.max_steps == 0:
        raise UserError(
            "training.lr_schedule = 'cosine' decays the learning rate to 0 at "
            "training.max_steps: set max_steps (--max-steps N) too"
        )
    check_privacy(cfg.privacy, cfg.training.max_steps)
    return cfg


MEMBERS_HELP = "only these peers may connect, when the list is not empty; re-read while running"
DEFAULT_CONFIG_TEXT = render_template(
    SETTINGS,
    header="gossiplearn peer configuration, every setting at its default. A setting followed "
    "by a flag can also be given as that flag to `gossiplearn start`, and the flag wins; "
    'see README.md, "Configuration reference".',
    trailer=comment(
        f"The member list, edited with `gossiplearn members add|remove|list`: {MEMBERS_HELP}."
    )
    + '[members]\n# "12D3KooW..." = "Acme Corp"\n',
)


def readme_table() -> str:
    """README.md's configuration table, made from the declarations."""
    members = (
        "| `[members]` | `gossiplearn members add\\|remove\\|list` | empty | "
        f'`"<peer id>" = "<name>"` | {MEMBERS_HELP} |'
    )
    return render_readme_table(SETTINGS, [members])


def main(argv: list[str] | None = None) -> None:
    """``python -m gossiplearn.peer.home.config --readme`` (or ``--template``): print README.md's
    configuration table (or the default peer.toml)."""
    parser = argparse.ArgumentParser(prog="python -m gossiplearn.peer.home.config")
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--readme", action="store_true", help="README.md's configuration table")
    what.add_argument("--template", action="store_true", help="the default peer.toml")
    args = parser.parse_args(argv)
    sys.stdout.write(readme_table() if args.readme else DEFAULT_CONFIG_TEXT)


if __name__ == "__main__":
    main()
