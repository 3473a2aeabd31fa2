"""The saved model file in a peer's home: written atomically, verified by checksum on load.

Layout: ``b"GLMODEL1"`` + SHA-256 of the body (32 bytes) + body, where the body is an encoded
``ModelOffer`` (the wire codec; no pickle). Written with ``files.write_atomic``: a crash leaves
either the old or the new model.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from gossiplearn.errors import DecodeError, UserError
from gossiplearn.gossip.messages import Limits, ModelOffer, decode, encode
from gossiplearn.peer.home.files import write_atomic

MAGIC = b"GLMODEL1"
MODEL_FILE_NAME = "model.glm"


def model_file_bytes(offer: ModelOffer) -> bytes:
    """The contents of a model file holding ``offer``."""
    body = encode(offer)
    return MAGIC + hashlib.sha256(body).digest() + body


def save_model(path: Path, offer: ModelOffer) -> None:
    write_atomic(path, model_file_bytes(offer))


def load_model(path: Path) -> ModelOffer:
    """Read a model file; ``UserError`` if it is missing, truncated, corrupt or not a model."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UserError(f"cannot read model file {path}: {exc.strerror}") from None
    return parse_model_file(data, str(path))


def parse_model_file(data: bytes, path: str) -> ModelOffer:
    """The model in a model file's contents; ``UserError`` naming ``path`` if they are not one."""
    head = len(MAGIC) + 32
    if len(data) < head or not data.startswith(MAGIC):
        raise UserError(f"{path} is not a gossiplearn model file (or is truncated)")
    digest, body = data[len(MAGIC) : head], data[head:]
    if hashlib.sha256(body).digest() != digest:
        raise UserError(f"model file {path} is corrupt (checksum mismatch)")
    try:
        msg = decode(body, limits=Limits(max_frame=len(body), max_tensors=1 << 16))
    except DecodeError as exc:
        raise UserError(f"model file {path} cannot be decoded: {exc}") from None
    if not isinstance(msg, ModelOffer):
        raise UserError(f"{path} does not hold a model")
    return msg
