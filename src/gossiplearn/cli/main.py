"""The ``gossiplearn`` command: parses arguments and calls ``gossiplearn.peer`` / ``.demo``."""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import trio

from gossiplearn import __version__
from gossiplearn.errors import UserError
from gossiplearn.peer.home.config import SETTINGS
from gossiplearn.peer.home.settings import OneOf, Setting

if TYPE_CHECKING:
    from gossiplearn.peer.home.home import Home

HOME_HELP = "Peer home (default: $GOSSIPLEARN_HOME, else the user data dir)."


def _home(home: Path | None) -> Home:
    """The home ``--home`` names, else $GOSSIPLEARN_HOME's, else the user data dir's."""
    from gossiplearn.peer.home.config import resolve_home
    from gossiplearn.peer.home.home import Home

    return Home(resolve_home(home))


def _fail(exc: UserError) -> None:
    click.echo(f"error: {exc}", err=True)
    sys.exit(1)


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="gossiplearn")
def cli() -> None:
    """Learn one model across companies by gossip, with no central server."""


@cli.command()
@click.option("--home", type=click.Path(file_okay=False, path_type=Path), help=HOME_HELP)
def init(home: Path | None) -> None:
    """Create the peer's home: an Ed25519 identity (mode 0600) and a commented peer.toml."""
    from gossiplearn.peer.home.config import resolve_home
    from gossiplearn.peer.home.home import init_home

    try:
        result = init_home(resolve_home(home))
    except UserError as exc:
        _fail(exc)
        return
    key_note = "created" if result.created_key else "kept existing"
    click.echo(f"home:    {result.home}")
    click.echo(f"identity {key_note}: {result.home / 'identity.key'}")
    if result.created_config:
        click.echo(f"config:  {result.home / 'peer.toml'} (edit it, or pass flags to start)")
    click.echo(f"peer id: {result.peer_id}")


def _param(s: Setting) -> str:
    assert s.flag is not None
    return s.flag.removeprefix("--").replace("-", "_")


# The start command's flags, made from the declarations in peer/home/config.py: the parameter
# name (click's, from the flag) → the setting it overrides (flag > peer.toml > default).
START_FLAGS: dict[str, Setting] = {_param(s): s for s in SETTINGS if s.flag is not None}
_FLAG_TYPES: dict[type, Any] = {int: int, float: float}


def start_overrides(flags: Mapping[str, Any]) -> dict[str, Any]:
    """The flags given to ``start`` as dotted-key overrides for ``with_overrides``. A file named
    on the command line is relative to where the command runs, so it is made absolute."""
    given = {START_FLAGS[k]: v for k, v in flags.items() if v not in (None, ())}
    return {
        s.dotted: str(Path(v).expanduser().resolve()) if s.spec.path else v
        for s, v in given.items()
    }


def _setting_options(command: Callable[..., None]) -> Callable[..., None]:
    """Add an option per setting with a flag, in declaration order, typed from its declaration;
    each defaults to None (not given). ``with_overrides`` checks values as it checks peer.toml."""
    for name, s in reversed(START_FLAGS.items()):  # click lists the last applied first
        assert s.flag is not None
        kwargs: dict[str, Any] = {"default": None, "type": _FLAG_TYPES.get(s.kind)}
        decl = s.flag
        if s.kind is bool:
            decl = f"{s.flag}/--no-{s.flag.removeprefix('--')}"
        elif s.kind is tuple:
            kwargs = {"multiple": True}
        elif isinstance(s.spec.check, OneOf):
            kwargs["type"] = click.Choice(s.spec.check.choices)
        elif s.spec.path:
            kwargs["type"] = click.Path(dir_okay=False, path_type=Path)
        accepts = f": {s.accepted}" if s.spec.check and not isinstance(s.spec.check, OneOf) else ""
        again = " Repeatable." if s.kind is tuple else ""
        help_text = f"{s.sentence()}{again} [{s.dotted}{accepts}]"
        command = click.option(decl, name, help=help_text, **kwargs)(command)
    return command


@cli.command()
@click.option("--home", type=click.Path(file_okay=False, path_type=Path), help=HOME_HELP)
@_setting_options
@click.option(
    "--log-level",
    default="info",
    show_default=True,
    type=click.Choice(["debug", "info", "warning", "error"]),
)
def start(home: Path | None, log_level: str, **flags: Any) -> None:
    """Run this company's peer in the foreground until Ctrl-C or SIGTERM."""
    from gossiplearn.peer.home.config import resolve_home
    from gossiplearn.peer.home.home import Home
    from gossiplearn.peer.preflight import preflight

    _setup_logging(log_level)
    overrides = start_overrides(flags)
    resolved = resolve_home(home)
    try:
        preflight(Home(resolved), overrides)  # a mistake is reported before torch loads
    except UserError as exc:
        _fail(exc)
    from gossiplearn.peer.app import run_peer
    from gossiplearn.peer.node.node import Node

    def ready(node: Node) -> None:
        click.echo(f"peer {node.peer_id} listening on:")
        for addr in node.transport.addrs():
            click.echo(f"  {addr}")
        click.echo(f"status: gossiplearn status --home {resolved}", nl=True)
        sys.stdout.flush()

    try:
        trio.run(lambda: run_peer(Home(resolved), overrides, on_ready=ready))
    except UserError as exc:
        _fail(exc)
    except KeyboardInterrupt:
        sys.exit(130)


@cli.command()
@click.option("--home", type=click.Path(file_okay=False, path_type=Path), help=HOME_HELP)
@click.option(
    "--json", "as_json", is_flag=True, help="Print one JSON object (with --watch: one per line)."
)
@click.option("--watch", is_flag=True, help="Refresh live until Ctrl-C.")
@click.option("--interval", type=float, default=1.0, show_default=True, help="--watch refresh (s).")
def status(home: Path | None, as_json: bool, watch: bool, interval: float) -> None:
    """Show the running peer's convergence: accuracy, loss, consensus distance, exchanges."""
    from gossiplearn.cli.render import render_status
    from gossiplearn.peer.status import fetch_status

    resolved = _home(home)

    def fetch() -> dict[str, Any]:
        return trio.run(fetch_status, resolved)

    try:
        if not watch:
            data = fetch()
            if as_json:
                click.echo(json.dumps(data, indent=2))
            else:
                from rich.console import Console

                Console().print(render_status(data))
            return
        if as_json:  # one JSON object per line, for piping into other tools
            while True:
                click.echo(json.dumps(fetch()))
                time.sleep(interval)
        from rich.live import Live

        with Live(render_status(fetch()), refresh_per_second=4, screen=False) as live:
            while True:
                time.sleep(interval)
                live.update(render_status(fetch()))
    except UserError as exc:
        _fail(exc)
    except KeyboardInterrupt:
        pass


@cli.group()
def task() -> None:
    """Make the task contract every member shares."""


@task.command("init")
@click.option(
    "--data",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="A sample of the data (CSV or Parquet) to infer the columns from.",
)
@click.option("--target", required=True, help="The column to predict.")
@click.option(
    "--kind",
    type=click.Choice(["classification", "regression"]),
    help="Default: classification for text or few whole numbers, else regression.",
)
@click.option(
    "--model",
    type=click.Choice(["linear", "logistic", "mlp"]),
    default="linear",
    show_default=True,
    help="linear (logistic regression for classes) or mlp.",
)
@click.option(
    "--hidden", default="64", show_default=True, help="mlp: hidden widths, comma-separated."
)
@click.option("--name", help="A name for the task (default: the --out file's name, e.g. wine).")
@click.option(
    "--out",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Where to write the contract (never overwritten).",
)
def task_init(  # noqa: PLR0917 - click passes each option
    data: Path,
    target: str,
    kind: str | None,
    model: str,
    hidden: str,
    name: str | None,
    out: Path,
) -> None:
    """Draft a task contract from a sample of the data, to review and share with every member.

    Infers each column's kind (numeric, or categorical with the values seen), the target's kind
    and classes, and writes a commented TOML file. Review it, add classes or categories other
    members hold, and give the same file to every member (`start --contract FILE`).
    """
    from gossiplearn.tasks.contract import ModelSpec, load_contract, render_contract
    from gossiplearn.tasks.records import infer_contract, read_table

    try:
        widths = tuple(int(w) for w in hidden.split(",") if w.strip())
        if not widths or min(widths) < 1:
            raise ValueError
    except ValueError:
        _fail(UserError(f"--hidden {hidden!r} is not valid: use widths like 64 or 128,64"))
        return
    kind_model = "linear" if model == "logistic" else model
    try:
        if out.exists():
            raise UserError(f"{out} exists; choose another --out (a contract is never overwritten)")
        table = read_table(data)
        contract, notes = infer_contract(
            table,
            target,
            name=name or out.stem,
            kind=kind,
            model=ModelSpec(kind_model, widths if kind_model == "mlp" else ()),
        )
        text = render_contract(
            contract, header=[f"Made by `gossiplearn task init` from {data.name}."], notes=notes
        )
        out.write_text(text, encoding="utf-8")
        load_contract(out)  # what members will read must load
    except UserError as exc:
        _fail(exc)
        return
    except OSError as exc:
        _fail(UserError(f"cannot write {out}: {exc.strerror or exc}"))
        return
    click.echo(f"task contract written to {out}: {contract.describe()}")
    click.echo(f"contract hash {contract.digest.hex()[:12]}")
    for note in notes[1:]:
        click.echo(f"  note: {note}")
    click.echo("review it, then give every member the same file: gossiplearn start --contract FILE")


def _open_model(home: Path | None, contract: Path | None) -> Any:
    from gossiplearn.peer.usage import open_model

    overrides = {"task.contract": str(contract.expanduser().resolve())} if contract else {}
    return trio.run(open_model, _home(home), overrides)


CONTRACT_HELP = "Task contract to read the data with (default: the home's [task] contract)."


@cli.command()
@click.option(
    "--data",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Labelled records (CSV or Parquet) to score the model on.",
)
@click.option("--home", type=click.Path(file_okay=False, path_type=Path), help=HOME_HELP)
@click.option("--contract", type=click.Path(dir_okay=False, path_type=Path), help=CONTRACT_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def evaluate(data: Path, home: Path | None, contract: Path | None, as_json: bool) -> None:
    """Score the peer's model on labelled records: accuracy, per-class precision, recall and
    F1 and the confusion matrix, or RMSE, MAE and R². Uses the running peer's latest model
    (without disturbing it), else the model a stopped peer saved."""
    from gossiplearn.cli.render import render_evaluation
    from gossiplearn.peer.usage import evaluate as run_evaluate

    try:
        report = run_evaluate(_open_model(home, contract), data)
    except UserError as exc:
        _fail(exc)
        return
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    from rich.console import Console

    Console().print(render_evaluation(report))


@cli.command()
@click.option(
    "--data",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Records (CSV or Parquet) to predict; the target column may be absent.",
)
@click.option(
    "--out",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="CSV to write: row, prediction and (classification) one probability per class.",
)
@click.option("--home", type=click.Path(file_okay=False, path_type=Path), help=HOME_HELP)
@click.option("--contract", type=click.Path(dir_okay=False, path_type=Path), help=CONTRACT_HELP)
def predict(data: Path, out: Path, home: Path | None, contract: Path | None) -> None:
    """Predict raw records with the peer's model (preprocessing applied from the model)."""
    from gossiplearn.peer.usage import predict as run_predict

    try:
        usable = _open_model(home, contract)
        rows = run_predict(usable, data, out)
    except UserError as exc:
        _fail(exc)
        return
    click.echo(f"{rows} predictions written to {out} (model: {usable.source})")


@cli.command()
@click.option(
    "--format",
    "fmt",
    required=True,
    type=click.Choice(["onnx", "safetensors"]),
    help="onnx: a graph with the preprocessing inside, to serve without gossiplearn; "
    "safetensors: the weights, with the contract and statistics as metadata.",
)
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--home", type=click.Path(file_okay=False, path_type=Path), help=HOME_HELP)
@click.option("--contract", type=click.Path(dir_okay=False, path_type=Path), help=CONTRACT_HELP)
def export(fmt: str, out: Path, home: Path | None, contract: Path | None) -> None:
    """Export the peer's model (the running peer's latest, else the saved one)."""
    from gossiplearn.tasks.export import export_onnx, export_safetensors

    try:
        usable = _open_model(home, contract)
        write = export_onnx if fmt == "onnx" else export_safetensors
        write(usable.task, usable.model, usable.stats, out)
    except UserError as exc:
        _fail(exc)
        return
    click.echo(f"{fmt} model written to {out} (model: {usable.source}, {usable.steps} steps)")


@cli.group()
def consortium() -> None:
    """Create the consortium's network key."""


@consortium.command("create")
@click.option(
    "--out",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Where to write the new key (mode 0600; never overwritten).",
)
def consortium_create(out: Path) -> None:
    """Write a new 32-byte consortium key in the libp2p private-network format.

    Give the file, over a secure channel, to every member; each sets security.consortium_key
    in peer.toml (or passes --consortium-key). Peers without it cannot connect.
    """
    from gossiplearn.crypto.consortium import ConsortiumKey, write_key_file

    key = ConsortiumKey.generate()
    try:
        write_key_file(out, key)
    except UserError as exc:
        _fail(exc)
        return
    click.echo(f"consortium key {key.key_id} written to {out} (mode 0600)")
    click.echo("share it only with members, over a secure channel; see docs/security.md")


@cli.group()
def members() -> None:
    """Edit the member list ([members] in peer.toml): only listed peers may connect."""


@members.command("add")
@click.argument("peer_id")
@click.argument("name")
@click.option("--home", type=click.Path(file_okay=False, path_type=Path), help=HOME_HELP)
def members_add(peer_id: str, name: str, home: Path | None) -> None:
    """Admit PEER_ID (printed by its `gossiplearn init`) under a display NAME."""
    try:
        new = _home(home).add_member(peer_id, name)
    except UserError as exc:
        _fail(exc)
        return
    click.echo(f"{'added' if new else 'renamed'} {name}: {peer_id}")


@members.command("remove")
@click.argument("who")
@click.option("--home", type=click.Path(file_okay=False, path_type=Path), help=HOME_HELP)
def members_remove(who: str, home: Path | None) -> None:
    """Remove a member, by peer ID or by name (a running peer disconnects it)."""
    try:
        peer_id = _home(home).remove_member(who)
    except UserError as exc:
        _fail(exc)
        return
    click.echo(f"removed {peer_id}")


@members.command("list")
@click.option("--home", type=click.Path(file_okay=False, path_type=Path), help=HOME_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object peer ID → name.")
def members_list(home: Path | None, as_json: bool) -> None:
    """List the members; an empty list admits every holder of the consortium key."""
    try:
        listed = _home(home).members()
    except UserError as exc:
        _fail(exc)
        return
    if as_json:
        click.echo(json.dumps(dict(listed), indent=2))
        return
    if not listed:
        click.echo("no member list: every holder of the consortium key may connect")
        return
    width = max(len(n) for n in listed.values())
    for peer_id, name in sorted(listed.items(), key=lambda item: item[1].lower()):
        click.echo(f"{name:<{width}}  {peer_id}")


@cli.command()
@click.option("--peers", type=click.IntRange(2, 64), default=6, show_default=True)
@click.option(
    "--seconds",
    type=click.FloatRange(5, 3600),
    default=30.0,
    show_default=True,
    help="How long the peers gossip and train.",
)
@click.option(
    "--partition", default="dirichlet:0.5", show_default=True, help="iid | dirichlet:ALPHA"
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--keep", is_flag=True, help="Keep the peers' homes and logs afterwards.")
def demo(peers: int, seconds: float, partition: str, seed: int, keep: bool) -> None:
    """Run a local consortium on the bundled digits data and show it converge."""
    from gossiplearn.demo.runner import DemoSettings, run_demo

    try:
        run_demo(
            DemoSettings(peers=peers, seconds=seconds, partition=partition, seed=seed, keep=keep)
        )
    except UserError as exc:
        _fail(exc)
    except KeyboardInterrupt:
        sys.exit(130)


def main() -> None:
    cli()
