"""A peer's home folder: creating it (``gossiplearn init``) and owning it while running.

Kept free of torch and libp2p imports so that ``init`` is quick.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from gossiplearn.crypto.identity import KEY_FILE_NAME, create_key_file
from gossiplearn.errors import UserError
from gossiplearn.peer.home.config import CONFIG_FILE_NAME, DEFAULT_CONFIG_TEXT
from gossiplearn.peer.home.files import write_atomic

LOCK_FILE_NAME = "peer.lock"


@dataclass(frozen=True)
class InitResult:
    home: Path
    peer_id: str
    created_key: bool
    created_config: bool


def init_home(home: Path) -> InitResult:
    """Create the home, its identity key (0600) and a commented peer.toml; never overwrite."""
    try:
        home.mkdir(parents=True, exist_ok=True, mode=0o700)
        identity, created_key = create_key_file(home / KEY_FILE_NAME)
        config = home / CONFIG_FILE_NAME
        created_config = False
        if not config.exists():
            write_atomic(config, DEFAULT_CONFIG_TEXT.encode("utf-8"))
            created_config = True
    except OSError as exc:
        raise UserError(f"cannot initialise {home}: {exc.strerror or exc}") from None
    return InitResult(home, identity.peer_id, created_key, created_config)


@contextmanager
def home_lock(home: Path) -> Iterator[None]:
    """Hold an exclusive lock on the home for the peer's lifetime."""
    path = home / LOCK_FILE_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = os.pread(fd, 32, 0).decode(errors="replace").strip()
            raise UserError(
                f"another peer (pid {other or '?'}) is already running in {home}; "
                "stop it first or use another --home"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)
