"""The local status endpoint: a Unix socket in the peer's home, readable by its owner only.

A client connects and reads one JSON object (the node's ``status()``) until EOF. Nothing is read
from the client. The socket never listens on a network interface.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

from gossiplearn.errors import UserError

log = logging.getLogger(__name__)

SOCKET_NAME = "status.sock"
MAX_STATUS_BYTES = 16 * 1024 * 1024
UNIX_PATH_MAX = 107


def socket_path(home: Path) -> Path:
    return home / SOCKET_NAME


def _check_length(path: Path) -> None:
    if len(os.fsencode(path)) > UNIX_PATH_MAX:
        raise UserError(
            f"status socket path {path} is longer than {UNIX_PATH_MAX} bytes (a Unix socket "
            "limit); use a shorter --home"
        )


async def serve_status(
    home: Path,
    snapshot: Callable[[], dict[str, Any]],
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``snapshot()`` as JSON on ``home/status.sock`` until cancelled; removes the socket."""
    path = socket_path(home)
    _check_length(path)
    path.unlink(missing_ok=True)  # left by a peer that crashed; the home lock says we own it
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)
    try:
        await sock.bind(os.fspath(path))
    finally:
        os.umask(old_umask)
    sock.listen(16)
    listener = trio.SocketListener(sock)

    async def handle(stream: trio.SocketStream) -> None:
        try:
            with trio.move_on_after(5):
                await stream.send_all(json.dumps(snapshot()).encode())
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            await stream.aclose()

    try:
        async with listener, trio.open_nursery() as nursery:
            await nursery.start(trio.serve_listeners, handle, [listener])
            task_status.started()
    finally:
        path.unlink(missing_ok=True)


STATUS_TIMEOUT = 5.0  # seconds


async def fetch_status(home: Path) -> dict[str, Any]:
    """Read the running peer's status. ``UserError`` (one clear line) if no peer answers
    within ``STATUS_TIMEOUT``."""
    timeout = STATUS_TIMEOUT
    path = socket_path(home)
    _check_length(path)
    no_peer = UserError(
        f"no peer is running in {home} (start one with `gossiplearn start --home {home}`)"
    )
    if not path.exists():
        raise no_peer
    chunks: list[bytes] = []
    try:
        with trio.fail_after(timeout):
            stream = await trio.open_unix_socket(os.fspath(path))
            async with stream:
                size = 0
                while data := await stream.receive_some(65536):
                    size += len(data)
                    if size > MAX_STATUS_BYTES:
                        raise UserError(f"status from {path} is larger than expected")
                    chunks.append(data)
    except trio.TooSlowError:
        raise UserError(f"the peer in {home} did not answer within {timeout:g} s") from None
    except OSError as exc:
        if exc.errno in (errno.ECONNREFUSED, errno.ENOENT):
            raise no_peer from None
        raise UserError(f"cannot reach the peer in {home}: {exc.strerror}") from None
    try:
        status = json.loads(b"".join(chunks))
    except ValueError:
        raise UserError(f"the peer in {home} sent an unreadable status") from None
    if not isinstance(status, dict):
        raise UserError(f"the peer in {home} sent an unreadable status")
    return status
