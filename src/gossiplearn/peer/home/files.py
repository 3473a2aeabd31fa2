"""Writing files in a peer's home so that a crash leaves the old contents or the new, never a mix.

``write_atomic`` writes to a temporary file in the same folder (``.<name>.<pid>.tmp``), fsyncs
it, renames it over the target (an atomic replace on POSIX) and fsyncs the folder, so the
rename itself survives a power loss. Every file the peer or ``gossiplearn members`` rewrites in
the home goes through it: peer.toml, the model file, checkpoints, the address book and the
contract copy.

Temporary names carry the writer's process ID: two processes never share one, and one process
writes a given file one call at a time (callers that write from several threads serialise
their writes). A writer killed mid-write leaves its temporary behind; ``remove_temporaries``
deletes them (only the home's owner may: see ``Home.lock``).
"""

from __future__ import annotations

import os
from pathlib import Path

PRIVATE = 0o600  # the mode of every file a peer writes in its (0700) home


def temporary_name(path: Path) -> Path:
    """Where ``write_atomic`` stages ``path``'s new contents in this process."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def write_atomic(path: Path, data: bytes, *, mode: int = PRIVATE) -> None:
    """Replace ``path`` (or create it, with ``mode``, less the umask) with ``data``, atomically
    and durably. Blocking (two fsyncs); raises ``OSError`` and then leaves no temporary file."""
    tmp = temporary_name(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_folder(path.parent)


def fsync_folder(folder: Path) -> None:
    """Make the renames and creations in ``folder`` durable. Raises ``OSError``."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_temporaries(path: Path) -> None:
    """Delete the temporaries of ``path`` left by writers that were killed, of any process."""
    for tmp in path.parent.glob(f".{path.name}.*.tmp"):
        tmp.unlink(missing_ok=True)
