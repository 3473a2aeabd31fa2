"""Peer configuration: the peer's home, ``peer.toml``, and command-line overrides.

Precedence: command-line flag > peer.toml > built-in default. Every key of peer.toml can be given
as a flag, and every flag has a key. Validation errors are ``UserError``s that name the key (and
the file), the bad value, and what is accepted.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import platformdirs

from gossiplearn.crypto.consortium import Members
from gossiplearn.errors import UserError

CONFIG_FILE_NAME = "peer.toml"
HOME_ENV = "GOSSIPLEARN_HOME"
LR_SCHEDULES = ("constant", "cosine")
COMPRESSIONS = ("none", "fp16", "bf16", "int8")  # gossip.compression; see gossip/compression.py


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
    listen: tuple[str, ...] = ("/ip4/0.0.0.0/tcp/7701",)
    bootstrap: tuple[str, ...] = ()
    dial_timeout: float = 10.0


@dataclass(frozen=True)
class GossipConfig:
    interval: float = 1.0
    exchange_timeout: float = 60.0
    discovery_interval: float = 5.0
    attempts: int = 3  # neighbours tried per round when they decline
    adopt_ratio: float = 4.0  # a fresh peer adopts a model this many times older (0 = never)
    compression: str = "none"  # none | fp16 | bf16 | int8: how our model travels


@dataclass(frozen=True)
class TrainingConfig:
    learning_rate: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 0.0
    batch_size: int = 32
    steps_per_second: float = 20.0
    max_steps: int = 0
    lr_schedule: str = "constant"  # constant | cosine (decays to 0 at max_steps)
    eval_interval: float = 2.0
    threads: int = 1
    enabled: bool = True
    checkpoint_interval: float = 30.0  # seconds between checkpoints; 0 = only at shutdown


@dataclass(frozen=True)
class TaskConfig:
    name: str = ""  # "": tabular when [task] contract is set, else digits
    shard: str = "1/1"
    partition: str = "iid"
    seed: int = 0
    validation_fraction: float = 0.2
    params: Mapping[str, Any] = field(default_factory=dict)  # every other [task] key


@dataclass(frozen=True)
class SecurityConfig:
    consortium_key: str = ""  # key file; relative to the home; "" = no private network
    screening: bool = True  # screen received models (norm and distance outliers)
    max_norm_ratio: float = 10.0  # refuse a model whose norm is this far from the usual
    ban_strikes: int = 3  # offences within ban_window that get a peer banned
    ban_window: float = 60.0  # seconds
    ban_seconds: float = 300.0  # how long a ban lasts
    max_inbound_streams: int = 32  # concurrent inbound gossip streams, all peers together
    max_streams_per_peer: int = 4  # concurrent inbound gossip streams from one peer


@dataclass(frozen=True)
class PeerConfig:
    network: NetworkConfig = field(default_factory=NetworkConfig)
    gossip: GossipConfig = field(default_factory=GossipConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    security: SecurityConfig = field(default_factory=SecurityConfig)
    members: Members = field(default_factory=Members)


SECTIONS: dict[str, type] = {
    "network": NetworkConfig,
    "gossip": GossipConfig,
    "training": TrainingConfig,
    "task": TaskConfig,
    "security": SecurityConfig,
    "members": Members,
}

# Checks beyond the type: (predicate, description of what is accepted).
_RULES: dict[str, tuple[Any, str]] = {
    "gossip.interval": (lambda v: v > 0, "a number of seconds > 0"),
    "gossip.exchange_timeout": (lambda v: v > 0, "a number of seconds > 0"),
    "gossip.discovery_interval": (lambda v: v > 0, "a number of seconds > 0"),
    "gossip.attempts": (lambda v: v >= 1, "an integer >= 1"),
    "gossip.compression": (
        lambda v: v in COMPRESSIONS,
        "none, fp16, bf16 or int8",
    ),
    "gossip.adopt_ratio": (
        lambda v: v == 0 or 1 <= v < float("inf"),
        "0 (never adopt) or a number >= 1",
    ),
    "network.dial_timeout": (lambda v: v > 0, "a number of seconds > 0"),
    "network.listen": (lambda v: len(v) >= 1, "at least one multiaddr"),
    "training.learning_rate": (lambda v: v > 0, "a number > 0"),
    "training.momentum": (lambda v: 0 <= v < 1, "a number in [0, 1)"),
    "training.weight_decay": (lambda v: v >= 0, "a number >= 0"),
    "training.batch_size": (lambda v: v >= 1, "an integer >= 1"),
    "training.steps_per_second": (lambda v: v >= 0, "a number >= 0 (0 = unlimited)"),
    "training.max_steps": (lambda v: v >= 0, "an integer >= 0 (0 = unlimited)"),
    "training.lr_schedule": (lambda v: v in LR_SCHEDULES, "constant or cosine"),
    "training.eval_interval": (lambda v: v > 0, "a number of seconds > 0"),
    "training.threads": (lambda v: v >= 1, "an integer >= 1"),
    "training.checkpoint_interval": (
        lambda v: 0 <= v < float("inf"),
        "a number of seconds >= 0 (0 = only at shutdown)",
    ),
    "task.validation_fraction": (lambda v: 0 <= v < 1, "a number in [0, 1)"),
    "security.max_norm_ratio": (lambda v: v > 1, "a number > 1"),
    "security.ban_strikes": (lambda v: v >= 1, "an integer >= 1"),
    "security.ban_window": (lambda v: v > 0, "a number of seconds > 0"),
    "security.ban_seconds": (lambda v: v >= 0, "a number of seconds >= 0 (0 = never ban)"),
    "security.max_inbound_streams": (lambda v: v >= 1, "an integer >= 1"),
    "security.max_streams_per_peer": (lambda v: v >= 1, "an integer >= 1"),
}


def _coerce(key: str, value: Any, default: Any, where: str) -> Any:
    """Check ``value`` against the type of ``default``; ints are accepted for floats."""
    bad = UserError(f"{where}: {key} = {value!r} is not valid: expected {_kind(default)}")
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise bad
        return value
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
        return value
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise bad
        try:
            return float(value)
        except OverflowError:
            raise bad from None
    if isinstance(default, str):
        if not isinstance(value, str):
            raise bad
        return value
    if isinstance(default, tuple):
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
            raise bad
        return tuple(value)
    return value


def _kind(default: Any) -> str:
    if isinstance(default, bool):
        return "true or false"
    if isinstance(default, int):
        return "an integer"
    if isinstance(default, float):
        return "a number"
    if isinstance(default, str):
        return "a string"
    if isinstance(default, tuple):
        return "a list of strings"
    return "a table"


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
        known = {f.name for f in fields(current)} - {"params"}
        updates: dict[str, Any] = {}
        extra: dict[str, Any] = {}
        for key, value in values.items():
            if key in known:
                updates[key] = _coerce(f"{section}.{key}", value, getattr(current, key), where)
                rule = _RULES.get(f"{section}.{key}")
                if rule and not rule[0](updates[key]):
                    raise UserError(
                        f"{where}: {section}.{key} = {value!r} is not valid: expected {rule[1]}"
                    )
            elif section == "task":
                extra[key] = value
            else:
                names = ", ".join(sorted(known))
                raise UserError(f"{where}: unknown key {key!r} in [{section}]; known: {names}")
        if extra:
            updates["params"] = {**current.params, **extra}
        cfg = replace(cfg, **{section: replace(current, **updates)})
    return cfg


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
    return cfg


DEFAULT_CONFIG_TEXT = """\
# gossiplearn peer configuration. Every key can also be given as a flag to
# `gossiplearn start` (flags win); see README.md, "Configuration reference".

[network]
# Multiaddrs to listen on. Port 7701 on every interface; use /tcp/0 for a free port.
listen = ["/ip4/0.0.0.0/tcp/7701"]
# Members to join through, each ending in /p2p/<peer id> (printed by their `gossiplearn start`).
bootstrap = []
dial_timeout = 10.0          # seconds

[gossip]
interval = 1.0               # mean seconds between exchanges we start (jittered ±50%)
exchange_timeout = 60.0      # seconds before an exchange in flight is abandoned
discovery_interval = 5.0     # seconds between peer-exchange requests
attempts = 3                 # neighbours tried per round when they are busy
compression = "none"         # how our model travels: none (exact) | fp16 | bf16 | int8 (with
                             # error feedback); fewer bytes, a small accuracy cost (benchmarks)
adopt_ratio = 4.0            # a new peer's first exchange adopts a model with this many times
                             # more training than its own, if it does as well on local
                             # validation data (0 = always average)

[training]
learning_rate = 0.05
momentum = 0.9
weight_decay = 0.0
batch_size = 32
steps_per_second = 20.0      # pace of local SGD steps; 0 = as fast as the CPU allows
max_steps = 0                # stop training after this many steps (0 = never); gossip goes on
lr_schedule = "constant"     # constant | cosine (decays to 0 at max_steps; needs max_steps)
eval_interval = 2.0          # seconds between validation evaluations
threads = 1                  # torch CPU threads for training
enabled = true               # false: only average (no local training)
checkpoint_interval = 30.0   # seconds between checkpoints of model, optimiser and counters
                             # (0 = only at shutdown); `start` resumes from the newest one

[task]
name = ""                    # "" (tabular with a contract, else digits) | digits | tabular
                             # | package.module:function
shard = "1/1"                # digits: this member's shard I/N
partition = "iid"            # digits: iid | dirichlet:ALPHA
seed = 0                     # same seed on every member: shards are then disjoint
validation_fraction = 0.2    # share of local data held out for validation
# Your own data: the task contract every member shares (`gossiplearn task init` makes one)
# and this member's file, CSV or Parquet (paths relative to this home):
# contract = "task.toml"
# data = "/path/to/our_data.csv"

[security]
# The consortium's network key (libp2p private network): only holders can connect.
# Create one with `gossiplearn consortium create --out FILE`; mode 0600. Relative to this home.
# consortium_key = "consortium.key"
screening = true             # refuse or clip received models that are outliers
max_norm_ratio = 10.0        # refuse a model whose norm is this many times off the usual
ban_strikes = 3              # invalid messages within ban_window that get a peer banned
ban_window = 60.0            # seconds
ban_seconds = 300.0          # how long a ban lasts (0 = never ban)
max_inbound_streams = 32     # concurrent inbound gossip streams, all peers together
max_streams_per_peer = 4     # concurrent inbound gossip streams from one peer

# The member list: when it is not empty, only these peers may connect (edit it with
# `gossiplearn members add|remove|list`).
[members]
# "12D3KooW..." = "Acme Corp"
"""
