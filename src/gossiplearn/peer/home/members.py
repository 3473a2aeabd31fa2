"""Editing the ``[members]`` table of a peer.toml (``gossiplearn members add|remove``; ``Home``
names the file).

Edits keep the file's comments and layout (tomlkit), are validated like a start-up load (the
whole file must still load), and replace the file atomically (``files.write_atomic``): a running
peer that re-reads it never sees half a file.
"""

from __future__ import annotations

from pathlib import Path

import tomlkit
from tomlkit.exceptions import TOMLKitError

from gossiplearn.crypto.consortium import check_member
from gossiplearn.errors import UserError
from gossiplearn.peer.home.config import build_config
from gossiplearn.peer.home.files import write_atomic


def add_member(path: Path, peer_id: str, name: str) -> bool:
    """Add or rename a member in the peer.toml at ``path``. Returns True if the peer was not
    listed before."""
    peer_id = peer_id.strip()  # pasted from a terminal
    check_member(peer_id, name, str(path))
    doc = _read(path)
    table = _members_table(doc)
    new = peer_id not in table
    table[peer_id] = name.strip()
    _write(path, doc)
    return new


def remove_member(path: Path, who: str) -> str:
    """Remove a member, by peer ID or by name, from the peer.toml at ``path``; returns the
    removed peer ID."""
    doc = _read(path)
    table = _members_table(doc)
    matches = [p for p, n in table.items() if who in (p, str(n))]
    if not matches:
        raise UserError(f"{who!r} is not in the member list of {path}")
    if len(matches) > 1:
        raise UserError(f"{len(matches)} members are named {who!r}: remove one by its peer ID")
    del table[matches[0]]
    _write(path, doc)
    return str(matches[0])


def _read(path: Path) -> tomlkit.TOMLDocument:
    if not path.parent.is_dir():
        raise UserError(f"{path.parent} is not a peer home; run `gossiplearn init` first")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        text = ""
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read {path}: {exc}") from None
    try:
        return tomlkit.parse(text)
    except TOMLKitError as exc:
        raise UserError(f"{path} is not valid TOML: {exc}") from None


def _members_table(doc: tomlkit.TOMLDocument) -> tomlkit.items.Table:
    table = doc.get("members")
    if table is None:
        table = tomlkit.table()
        doc["members"] = table
    if not isinstance(table, tomlkit.items.Table):
        raise UserError('[members] in peer.toml must be a table of "<peer id>" = "<name>"')
    return table


def _write(path: Path, doc: tomlkit.TOMLDocument) -> None:
    text = tomlkit.dumps(doc)
    build_config(tomlkit.parse(text).unwrap(), str(path))  # the result must still load
    try:
        write_atomic(path, text.encode("utf-8"))
    except OSError as exc:
        raise UserError(f"cannot write {path}: {exc.strerror or exc}") from None
