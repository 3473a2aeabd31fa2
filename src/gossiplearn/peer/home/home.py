"""A peer's home folder and everything in it: ``Home``.

The rest of the peer asks a ``Home`` for what the folder holds, and never joins a file name to
the folder itself. The layout::

    peer.toml            the configuration (``config.py``); [members] edited by ``members.py``
    identity.key         the Ed25519 identity, mode 0600 (``crypto.identity``)
    peer.lock            locked while a peer runs here: one peer per home
    peers.json           the address book (``addressbook.py``)
    model.glm            the model, saved when a peer stops (``modelfile.py``)
    checkpoint.glc       the newest checkpoint; ``checkpoint.prev.glc`` the one before, and
                         ``checkpoint.bad.glc`` a damaged one set aside (``checkpoint.py``)
    contract.toml        a copy of the contract the peer trains under, for evaluate/predict/export
    privacy.json         the privacy ledger of a peer that trains with differential privacy,
                         written ahead of its training steps (``privacy.py``)
    status.sock          the running peer's status endpoint, and ``model.sock`` its model's
                         (``peer/status.py``)

Invariants:
- Files are written with ``files.write_atomic``: a crash leaves the old or the new contents.
- A path in peer.toml (the contract, the data, the consortium key) is relative to the home;
  an absolute path stays as it is (``resolve``).
- Only the holder of ``lock()`` writes the files a running peer writes (model, checkpoints,
  address book, contract copy) and deletes their stale temporaries. ``gossiplearn members``
  edits peer.toml without the lock: a running peer re-reads it.
- No torch or libp2p import here, so that ``gossiplearn init`` is quick; what needs the
  trainer (resuming, the checkpoint service) is in ``resume.py`` and takes a ``Home``.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gossiplearn.crypto.consortium import ConsortiumKey, Members
from gossiplearn.crypto.consortium import load_key_file as load_consortium_key
from gossiplearn.crypto.identity import KEY_FILE_NAME, Identity, create_key_file, load_key_file
from gossiplearn.crypto.privacy import Ledger
from gossiplearn.errors import UserError
from gossiplearn.gossip.messages import ModelOffer, PeerRecord
from gossiplearn.peer.home import members as member_file
from gossiplearn.peer.home.addressbook import ADDRESS_BOOK_FILE_NAME, load_address_book
from gossiplearn.peer.home.checkpoint import (
    CURRENT_NAME,
    Checkpoint,
    Loaded,
    load_checkpoint,
    save_checkpoint,
)
from gossiplearn.peer.home.config import (
    CONFIG_FILE_NAME,
    DEFAULT_CONFIG_TEXT,
    SETTINGS,
    PeerConfig,
    load_config_file,
    with_overrides,
)
from gossiplearn.peer.home.files import remove_temporaries, write_atomic
from gossiplearn.peer.home.modelfile import MODEL_FILE_NAME, load_model, save_model
from gossiplearn.peer.home.privacy import LEDGER_FILE_NAME, load_ledger, save_ledger

LOCK_FILE_NAME = "peer.lock"
CONTRACT_COPY_NAME = "contract.toml"
STATUS_SOCKET_NAME = "status.sock"
MODEL_SOCKET_NAME = "model.sock"
# the [task] keys that name files (declared ``path``), relative to the home
TASK_FILE_KEYS = tuple(s.key for s in SETTINGS if s.section == "task" and s.spec.path)


@dataclass(frozen=True)
class InitResult:
    home: Path
    peer_id: str
    created_key: bool
    created_config: bool


@dataclass(frozen=True)
class Home:
    """The home folder at ``path``. Cheap to make; nothing is read until asked."""

    path: Path

    def __str__(self) -> str:
        return str(self.path)

    # ---- the files

    @property
    def config_file(self) -> Path:
        return self.path / CONFIG_FILE_NAME

    @property
    def key_file(self) -> Path:
        return self.path / KEY_FILE_NAME

    @property
    def lock_file(self) -> Path:
        return self.path / LOCK_FILE_NAME

    @property
    def address_book(self) -> Path:
        return self.path / ADDRESS_BOOK_FILE_NAME

    @property
    def model_file(self) -> Path:
        return self.path / MODEL_FILE_NAME

    @property
    def contract_copy(self) -> Path:
        return self.path / CONTRACT_COPY_NAME

    @property
    def privacy_ledger_file(self) -> Path:
        return self.path / LEDGER_FILE_NAME

    @property
    def status_socket(self) -> Path:
        return self.path / STATUS_SOCKET_NAME

    @property
    def model_socket(self) -> Path:
        return self.path / MODEL_SOCKET_NAME

    def resolve(self, configured: str) -> Path:
        """A file named in peer.toml: relative to the home, ``~`` expanded."""
        return self.path / Path(configured).expanduser()

    # ---- creating and owning it

    def init(self) -> InitResult:
        """Create the home (0700), its identity key (0600) and a commented peer.toml; never
        overwrite either. Raises ``UserError``."""
        try:
            self.path.mkdir(parents=True, exist_ok=True, mode=0o700)
            identity, created_key = create_key_file(self.key_file)
            created_config = False
            if not self.config_file.exists():
                write_atomic(self.config_file, DEFAULT_CONFIG_TEXT.encode("utf-8"))
                created_config = True
        except OSError as exc:
            raise UserError(f"cannot initialise {self}: {exc.strerror or exc}") from None
        return InitResult(self.path, identity.peer_id, created_key, created_config)

    @contextmanager
    def lock(self) -> Iterator[None]:
        """Hold an exclusive lock on the home for the peer's lifetime; on taking it, delete the
        temporaries a killed peer left. ``UserError`` if another peer holds it."""
        fd = os.open(self.lock_file, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                other = os.pread(fd, 32, 0).decode(errors="replace").strip()
                raise UserError(
                    f"another peer (pid {other or '?'}) is already running in {self}; "
                    "stop it first or use another --home"
                ) from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, str(os.getpid()).encode(), 0)
            for written in (
                self.path / CURRENT_NAME,
                self.model_file,
                self.address_book,
                self.contract_copy,
                self.privacy_ledger_file,
            ):
                remove_temporaries(written)
            yield
        finally:
            os.close(fd)

    def identity(self) -> Identity:
        """This peer's identity. ``UserError`` if the home has none yet, or it is unusable."""
        if not self.key_file.exists():
            raise UserError(
                f"{self} has no identity yet; run `gossiplearn init --home {self}` first"
            )
        return load_key_file(self.key_file)

    # ---- configuration and members

    def config(self, overrides: Mapping[str, Any] | None = None) -> PeerConfig:
        """peer.toml (defaults if absent) with ``overrides`` (dotted keys, from flags) applied.
        Raises ``UserError``."""
        return with_overrides(load_config_file(self.config_file), overrides or {})

    def config_version(self) -> float | None:
        """peer.toml's modification time (None: no file), to notice edits while running."""
        try:
            return self.config_file.stat().st_mtime
        except OSError:
            return None

    def members(self) -> Members:
        """The member list in peer.toml (flags cannot change it). Raises ``UserError``."""
        return load_config_file(self.config_file).members

    def add_member(self, peer_id: str, name: str) -> bool:
        """Add or rename a member; True if the peer was not listed before."""
        return member_file.add_member(self.config_file, peer_id, name)

    def remove_member(self, who: str) -> str:
        """Remove a member by peer ID or by name; returns its peer ID."""
        return member_file.remove_member(self.config_file, who)

    def consortium_key(self, config: PeerConfig) -> ConsortiumKey | None:
        """The configured consortium key, or None. Raises ``UserError``."""
        if not config.security.consortium_key:
            return None
        return load_consortium_key(self.resolve(config.security.consortium_key))

    def task_params(self, config: PeerConfig) -> dict[str, Any]:
        """``[task]``'s other keys, for the task, with the files among them resolved."""
        params = dict(config.task.params)
        for key in TASK_FILE_KEYS:
            if isinstance(params.get(key), str) and params[key]:
                params[key] = str(self.resolve(params[key]))
        return params

    def contract(self, config: PeerConfig) -> Path | None:
        """The configured contract file, or None."""
        value = config.task.params.get("contract")
        return self.resolve(value) if isinstance(value, str) and value else None

    def keep_contract(self, config: PeerConfig) -> None:
        """Copy the configured contract to ``contract.toml`` (unless it is that file or the
        copy is current), so evaluate, predict and export find it beside the saved model.
        Raises ``OSError``."""
        source = self.contract(config)
        if source is None or source.resolve() == self.contract_copy.resolve():
            return
        data = source.read_bytes()
        if not self.contract_copy.exists() or self.contract_copy.read_bytes() != data:
            write_atomic(self.contract_copy, data)

    # ---- what a peer saves

    def known_peers(self) -> list[PeerRecord]:
        """The address book's peers (``[]`` if it is missing or unusable; logged). Blocking."""
        return load_address_book(self.address_book)

    def saved_model(self) -> ModelOffer | None:
        """The saved model, or None if there is none. ``UserError`` if it is unusable."""
        if not self.model_file.exists():
            return None
        return load_model(self.model_file)

    def save_model(self, offer: ModelOffer) -> None:
        """Write ``model.glm``. Blocking; raises ``OSError``."""
        save_model(self.model_file, offer)

    def load_checkpoint(
        self, check: Callable[[Checkpoint], str | None] = lambda cp: None
    ) -> Loaded | None:
        """The newest checkpoint ``check`` accepts (see ``checkpoint.load_checkpoint``)."""
        return load_checkpoint(self.path, check)

    def save_checkpoint(self, data: bytes) -> None:
        """Make ``data`` the newest checkpoint, keeping the one before. Blocking; ``OSError``."""
        save_checkpoint(self.path, data)

    def privacy_ledger(self) -> Ledger | None:
        """The saved privacy ledger, or None. ``UserError`` if the file is unusable."""
        return load_ledger(self.privacy_ledger_file)

    def save_privacy_ledger(self, ledger: Ledger) -> None:
        """Write ``privacy.json``. Blocking; raises ``OSError``."""
        save_ledger(self.privacy_ledger_file, ledger)


def init_home(path: Path) -> InitResult:
    """``Home(path).init()``: what ``gossiplearn init`` does."""
    return Home(path).init()
