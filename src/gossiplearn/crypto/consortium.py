"""The consortium: its shared network key (libp2p private network) and its member list.

The consortium key is a 32-byte secret shared by every member. Its file uses the libp2p
private-network key format (``swarm.key`` in go-libp2p and IPFS)::

    /key/swarm/psk/1.0.0/
    /base16/
    <64 hex digits>

Like ssh with a private key, a key file that other users can read is refused: anyone who reads
it can enter the network. The member list maps peer IDs to display names (a company's name);
an empty list admits every holder of the key. Pure: file reads, no network, no libp2p.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import secrets
import stat
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from gossiplearn.crypto.identity import is_peer_id
from gossiplearn.errors import UserError

KEY_HEADER = "/key/swarm/psk/1.0.0/"
KEY_BYTES = 32
MAX_NAME = 64


@dataclass(frozen=True)
class ConsortiumKey:
    """A 32-byte pre-shared network key."""

    secret: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if len(self.secret) != KEY_BYTES:
            raise ValueError(f"a consortium key is {KEY_BYTES} bytes, not {len(self.secret)}")

    @staticmethod
    def generate() -> ConsortiumKey:
        return ConsortiumKey(secrets.token_bytes(KEY_BYTES))

    @property
    def hex(self) -> str:
        """64 hex digits, as py-libp2p's ``psk`` argument takes it."""
        return self.secret.hex()

    @property
    def key_id(self) -> str:
        """A short public name of the key (first 8 hex digits of its SHA-256), to tell keys
        apart in logs and status without revealing them."""
        return hashlib.sha256(b"gossiplearn consortium key id\0" + self.secret).hexdigest()[:8]

    def to_text(self) -> str:
        return f"{KEY_HEADER}\n/base16/\n{self.hex}\n"

    @staticmethod
    def parse(text: str, where: str = "consortium key") -> ConsortiumKey:
        """Parse the private-network key format (base16, base64 or bin encodings).

        Raises ``UserError`` naming what is wrong.
        """
        lines = [line.strip() for line in text.strip().splitlines()]
        if len(lines) != 3 or lines[0] != KEY_HEADER:
            raise UserError(
                f"{where} is not a consortium key: expected three lines, {KEY_HEADER!r}, "
                "'/base16/' and 64 hex digits (create one with `gossiplearn consortium create`)"
            )
        encoding, body = lines[1], lines[2]
        try:
            if encoding == "/base16/":
                secret = bytes.fromhex(body)
            elif encoding == "/base64/":
                secret = base64.b64decode(body, validate=True)
            elif encoding == "/bin/":
                secret = body.encode("latin-1")
            else:
                raise UserError(
                    f"{where}: unknown key encoding {encoding!r} (expected /base16/ or /base64/)"
                )
        except (ValueError, binascii.Error):
            raise UserError(f"{where}: the key is not valid {encoding.strip('/')}") from None
        if len(secret) != KEY_BYTES:
            raise UserError(f"{where}: the key is {len(secret)} bytes, a consortium key is 32")
        return ConsortiumKey(secret)


def write_key_file(path: Path, key: ConsortiumKey) -> None:
    """Write ``key`` to a new file of mode 0600; never overwrites (``UserError`` if it exists)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise UserError(
            f"{path} already exists; a consortium key is never overwritten "
            "(choose another --out, or delete the old key if you really mean to replace it)"
        ) from None
    except OSError as exc:
        raise UserError(f"cannot create {path}: {exc.strerror or exc}") from None
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(key.to_text())
        f.flush()
        os.fsync(f.fileno())


def load_key_file(path: Path) -> ConsortiumKey:
    """Read a consortium key file, refusing one that other users could read."""
    try:
        mode = path.stat().st_mode
        text = path.read_text(encoding="latin-1")
    except FileNotFoundError:
        raise UserError(
            f"no consortium key at {path} (get the file from your consortium's administrator, "
            "or create one with `gossiplearn consortium create --out FILE`)"
        ) from None
    except OSError as exc:
        raise UserError(f"cannot read consortium key {path}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(mode):
        raise UserError(f"consortium key {path} is not a regular file")
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise UserError(
            f"permissions {stat.S_IMODE(mode):04o} for consortium key {path} are too open: "
            f"it must not be accessible by other users. Run `chmod 600 {path}`"
        )
    return ConsortiumKey.parse(text, f"consortium key {path}")


@dataclass(frozen=True)
class Members(Mapping[str, str]):
    """The consortium's member list: peer ID → display name. Empty means "every key holder"."""

    names: Mapping[str, str] = field(default_factory=dict)

    def __getitem__(self, peer_id: str) -> str:
        return self.names[peer_id]

    def __iter__(self) -> Iterator[str]:
        return iter(self.names)

    def __len__(self) -> int:
        return len(self.names)

    @property
    def restricted(self) -> bool:
        """True when only listed peers may connect."""
        return bool(self.names)

    def admits(self, peer_id: str) -> bool:
        return not self.names or peer_id in self.names

    def name_of(self, peer_id: str) -> str | None:
        return self.names.get(peer_id)

    @staticmethod
    def parse(table: object, where: str) -> Members:
        """Validate a ``[members]`` table (``"<peer id>" = "<name>"``); raises ``UserError``."""
        if not isinstance(table, Mapping):
            raise UserError(f'{where}: [members] must be a table of "<peer id>" = "<name>"')
        names: dict[str, str] = {}
        for peer_id, name in table.items():
            check_member(str(peer_id), name, where)
            names[str(peer_id)] = name
        return Members(names)


def check_member(peer_id: str, name: object, where: str) -> None:
    """Raise ``UserError`` unless ``peer_id`` is an Ed25519 peer ID and ``name`` a short name."""
    if not is_peer_id(peer_id):
        raise UserError(
            f"{where}: {peer_id!r} is not a peer ID (a member is listed by the '12D3KooW...' "
            "ID that its `gossiplearn init` printed)"
        )
    if not isinstance(name, str) or not 0 < len(name.strip()) <= MAX_NAME:
        raise UserError(
            f"{where}: the name of member {peer_id} must be a non-empty string of at most "
            f"{MAX_NAME} characters"
        )
