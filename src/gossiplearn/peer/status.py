"""The local endpoints: Unix sockets in the peer's home, usable by its owner only.

``status.sock`` (``Home.status_socket``): a client connects and reads one JSON object (the
node's ``status()``) until EOF. ``model.sock`` (``Home.model_socket``): the same, with the running
model as model file bytes (``home/modelfile.py``), a snapshot that leaves training undisturbed.
Nothing is read from the client. The sockets never listen on a network interface.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

from gossiplearn.errors import UserError
from gossiplearn.peer.home.home import Home

log = logging.getLogger(__name__)

MAX_STATUS_BYTES = 16 * 1024 * 1024
UNIX_PATH_MAX = 107
SERVE_TIMEOUT = 60.0  # seconds a client may take to read an answer
MODEL_TIMEOUT = 60.0  # seconds to fetch the running model (a snapshot, then its bytes)


def _check_length(path: Path) -> None:
    if len(os.fsencode(path)) > UNIX_PATH_MAX:
        raise UserError(
            f"status socket path {path} is longer than {UNIX_PATH_MAX} bytes (a Unix socket "
            "limit); use a shorter --home"
        )


async def serve_status(
    home: Home,
    snapshot: Callable[[], dict[str, Any]],
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``snapshot()`` as JSON on the home's ``status.sock`` until cancelled; removes the
    socket."""

    async def payload() -> bytes:
        return json.dumps(snapshot()).encode()

    await _serve(home.status_socket, payload, task_status=task_status)


async def serve_model(
    home: Home,
    model_file: Callable[[], Awaitable[bytes]],
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the running model (model file bytes, ``peer.modelfile``) on the home's ``model.sock``
    until cancelled: ``gossiplearn evaluate``, ``predict`` and ``export`` read it there."""
    await _serve(home.model_socket, model_file, task_status=task_status)


async def _serve(
    path: Path,
    payload: Callable[[], Awaitable[bytes]],
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Answer every connection to the Unix socket ``path`` (owner-only) with ``payload()``."""
    _check_length(path)
    # left by a peer that crashed; the home lock says we own it
    path.unlink(missing_ok=True)  # noqa: ASYNC240 - a local unlink, before serving
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
            with trio.move_on_after(SERVE_TIMEOUT):
                await stream.send_all(await payload())
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            await stream.aclose()

    try:
        async with listener, trio.open_nursery() as nursery:
            await nursery.start(trio.serve_listeners, handle, [listener])
            task_status.started()
    finally:
        path.unlink(missing_ok=True)  # noqa: ASYNC240 - a local unlink, at exit


STATUS_TIMEOUT = 5.0  # seconds


async def fetch_status(home: Home) -> dict[str, Any]:
    """Read the running peer's status. ``UserError`` (one clear line) if no peer answers
    within ``STATUS_TIMEOUT``."""
    data = await _fetch(home, home.status_socket, STATUS_TIMEOUT, MAX_STATUS_BYTES)
    try:
        status = json.loads(data)
    except ValueError:
        raise UserError(f"the peer in {home} sent an unreadable status") from None
    if not isinstance(status, dict):
        raise UserError(f"the peer in {home} sent an unreadable status")
    return status


async def fetch_model(home: Home) -> bytes | None:
    """The running peer's model file bytes, or None when no peer runs in ``home``."""
    if not home.model_socket.exists():
        return None
    try:
        return await _fetch(home, home.model_socket, MODEL_TIMEOUT, 1 << 40)
    except NoPeer:
        return None


class NoPeer(UserError):
    """No peer answers on the home's socket."""


async def _fetch(home: Home, path: Path, deadline: float, limit: int) -> bytes:
    _check_length(path)
    no_peer = NoPeer(
        f"no peer is running in {home} (start one with `gossiplearn start --home {home}`)"
    )
    if not path.exists():  # noqa: ASYNC240 - a local stat, before connecting
        raise no_peer
    chunks: list[bytes] = []
    try:
        with trio.fail_after(deadline):
            stream = await trio.open_unix_socket(os.fspath(path))
            async with stream:
                size = 0
                while data := await stream.receive_some(1 << 20):
                    size += len(data)
                    if size > limit:
                        raise UserError(f"the answer from {path} is larger than expected")
                    chunks.append(data)
    except trio.TooSlowError:
        raise UserError(f"the peer in {home} did not answer within {deadline:g} s") from None
    except OSError as exc:
        if exc.errno in (errno.ECONNREFUSED, errno.ENOENT):
            raise no_peer from None
        raise UserError(f"cannot reach the peer in {home}: {exc.strerror}") from None
    return b"".join(chunks)
