"""Pairwise additive masks for secure group averaging (docs/protocol.md 16).

A group of ``g ≥ 3`` members sums its fixed-point vectors (``crypto.fixedpoint``) so that no
one sees another's vector, only the sum: every pair ``(i, j)`` agrees on a one-time seed, and
``i`` adds the seed's keystream to its vector while ``j`` subtracts it, so that all masks cancel
in the sum (Bonawitz et al., "Practical Secure Aggregation for Privacy-Preserving Machine
Learning", CCS 2017, without its dropout recovery: here a dropout abandons the round).

- Each member makes an ephemeral X25519 key pair per round and announces the public key, signed
  with its Ed25519 identity over ``announcement_bytes``: a domain tag, the round id, the ordered
  group, its own peer ID, the key, its sample count, the model fingerprint and the task digest.
  So an announcement is valid for exactly one member of one round of one group on one model.
- ``pair_seed``: X25519 shared secret → HKDF-SHA256 (salt: the round id; info: the phase's
  domain then the canonical msgpack of ``[group, lower peer ID, higher peer ID]``) → 32 bytes.
  A round sums one vector per phase, and each phase has its own domain (``SEED_DOMAIN`` for
  the model, ``STATS_SEED_DOMAIN`` for a task's statistics, summed first): distinct HKDF
  ``info`` gives independent seeds, so no keystream ever masks two vectors.
- ``mask_words``: the ChaCha20 keystream under that seed (nonce: 16 zero bytes — safe because
  each seed keys exactly one stream), read as little-endian uint64 words.
- ``apply_masks``: member ``i`` adds the mask of pair ``(i, j)`` when ``i < j`` and subtracts it
  otherwise, comparing peer IDs as UTF-8 bytes; all arithmetic is modulo 2^64.

Invariants:
- One seed keys one keystream, which masks one vector: a seed is derived per pair, round and
  phase, never reused.
- The sum of all members' masked vectors equals the sum of their unmasked vectors, exactly.
- A seed is never derived from an all-zero shared secret (a small-order public key): ``BadKey``.
- "Canonical msgpack" is ``msgpack.packb(value, use_bin_type=True)``: str as str, bytes as
  bin, integers in their shortest form.
- Pure: no clocks, no global RNG. Key pairs come from the caller (``X25519PrivateKey.generate``,
  the operating system's CSPRNG); masks come from the seeds alone.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import msgpack
import numpy as np
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from gossiplearn.crypto.fixedpoint import WORD
from gossiplearn.crypto.identity import Identity, public_key_from_peer_id
from gossiplearn.errors import LocalProtocolError, RemoteProtocolError

KEY_DOMAIN = b"gossiplearn/group-key/v1"
SEED_DOMAIN = b"gossiplearn/group-seed/v1"  # the model's phase (the only one without statistics)
STATS_SEED_DOMAIN = b"gossiplearn/group-stats-seed/v1"  # the statistics' phase
ROUND_ID_BYTES = 16
PUBLIC_KEY_BYTES = 32
SIGNATURE_BYTES = 64
SEED_BYTES = 32
CHACHA_NONCE = bytes(16)  # ChaCha20 in `cryptography`: 4-byte LE counter (0) + 12-byte nonce


class BadKey(RemoteProtocolError):
    """A member's X25519 public key yields no usable shared secret (small-order point)."""

    reason = "bad-key"


@dataclass(frozen=True, slots=True)
class RoundContext:
    """What every signature and seed of one round is bound to."""

    round_id: bytes  # ROUND_ID_BYTES, chosen by the leader
    group: tuple[str, ...]  # the members' peer IDs, in the leader's order (leader first)
    fingerprint: bytes  # the model's (gossip.messages.fingerprint)
    task: bytes  # the task digest (docs/protocol.md 5.5)


@dataclass(frozen=True, slots=True)
class KeyAnnouncement:
    """A member's signed ephemeral key for one round."""

    peer_id: str
    public_key: bytes  # X25519, PUBLIC_KEY_BYTES
    samples: int  # the member's weight in the average
    signature: bytes = field(repr=False)  # Ed25519 over announcement_bytes, SIGNATURE_BYTES


def announcement_bytes(ctx: RoundContext, peer_id: str, public_key: bytes, samples: int) -> bytes:
    """The bytes a key announcement's signature covers (canonical msgpack of an array)."""
    body = [
        KEY_DOMAIN,
        ctx.round_id,
        list(ctx.group),
        peer_id,
        public_key,
        samples,
        ctx.fingerprint,
        ctx.task,
    ]
    return msgpack.packb(body, use_bin_type=True)  # type: ignore[no-any-return]


def public_bytes(key: X25519PrivateKey) -> bytes:
    """The raw 32-byte X25519 public key of ``key``."""
    return key.public_key().public_bytes_raw()


def announce(
    identity: Identity, ctx: RoundContext, key: X25519PrivateKey, samples: int
) -> KeyAnnouncement:
    """Our signed announcement of ``key`` for this round."""
    public = public_bytes(key)
    signature = identity.sign(announcement_bytes(ctx, identity.peer_id, public, samples))
    return KeyAnnouncement(identity.peer_id, public, samples, signature)


def verify(ann: KeyAnnouncement, ctx: RoundContext) -> bool:
    """Whether ``ann`` was signed by the identity of ``ann.peer_id`` for exactly this round.
    False (never raises) for a peer ID that is not an Ed25519 libp2p ID or a bad signature."""
    try:
        owner = Ed25519PublicKey.from_public_bytes(public_key_from_peer_id(ann.peer_id))
        owner.verify(
            ann.signature, announcement_bytes(ctx, ann.peer_id, ann.public_key, ann.samples)
        )
    except (ValueError, InvalidSignature):
        return False
    return True


def precedes(a: str, b: str) -> bool:
    """The pair order: ``a`` adds the pair's mask, ``b`` subtracts it (UTF-8 byte order)."""
    return a.encode() < b.encode()


def pair_seed(
    key: X25519PrivateKey,
    ctx: RoundContext,
    ours: str,
    theirs: str,
    their_public: bytes,
    *,
    domain: bytes = SEED_DOMAIN,
) -> bytes:
    """The one-time seed of the pair (``ours``, ``theirs``) in this round's phase ``domain``
    (``SEED_DOMAIN`` or ``STATS_SEED_DOMAIN``); both derive it. Raises ``BadKey`` for a public
    key that is not 32 bytes or gives an all-zero secret."""
    if domain not in (SEED_DOMAIN, STATS_SEED_DOMAIN):
        raise LocalProtocolError(f"no such phase: {domain!r}")
    if ours == theirs:
        raise LocalProtocolError("a member has no pair with itself")
    try:
        shared = key.exchange(X25519PublicKey.from_public_bytes(their_public))
    except ValueError:  # wrong length, or OpenSSL's own refusal of a small-order point
        raise BadKey(f"{theirs}'s public key gives no shared secret") from None
    if shared == bytes(len(shared)):
        raise BadKey(f"{theirs}'s public key gives an all-zero shared secret")
    lo, hi = (ours, theirs) if precedes(ours, theirs) else (theirs, ours)
    info = domain + msgpack.packb([list(ctx.group), lo, hi], use_bin_type=True)
    hkdf = HKDF(algorithm=hashes.SHA256(), length=SEED_BYTES, salt=ctx.round_id, info=info)
    return hkdf.derive(shared)


KEYSTREAM_CHUNK = 1 << 20  # bytes of keystream made at a time


def mask_words(seed: bytes, length: int) -> np.ndarray:
    """``length`` uint64 words of the ChaCha20 keystream under ``seed`` (little-endian)."""
    if len(seed) != SEED_BYTES:
        raise LocalProtocolError(f"a seed is {SEED_BYTES} bytes")
    encryptor = Cipher(algorithms.ChaCha20(seed, CHACHA_NONCE), mode=None).encryptor()
    words = np.empty(length, dtype=WORD)
    out = words.view(np.uint8)
    zeros = bytes(min(KEYSTREAM_CHUNK, out.size))  # the keystream is ChaCha20 of zeros
    for start in range(0, out.size, KEYSTREAM_CHUNK):
        n = min(KEYSTREAM_CHUNK, out.size - start)  # written in place: no vector-sized copies
        out[start : start + n] = np.frombuffer(encryptor.update(zeros[:n]), dtype=np.uint8)
    return words.astype(np.uint64, copy=False)  # a no-op on little-endian machines


def apply_masks(words: np.ndarray, ours: str, seeds: Mapping[str, bytes]) -> np.ndarray:
    """``words`` masked with one pair mask per other member (``seeds``: peer ID → seed)."""
    out = np.array(words, dtype=np.uint64, copy=True)
    for theirs, seed in sorted(seeds.items()):
        mask = mask_words(seed, out.size)
        if precedes(ours, theirs):
            np.add(out, mask, out=out)  # uint64 arrays wrap modulo 2^64, silently
        else:
            np.subtract(out, mask, out=out)
    return out


def sum_words(vectors: Iterable[np.ndarray], length: int) -> np.ndarray:
    """The sum of uint64 vectors of ``length`` words, modulo 2^64."""
    total = np.zeros(length, dtype=np.uint64)
    for vec in vectors:
        if vec.shape != (length,):
            raise LocalProtocolError(f"a vector of shape {vec.shape}, expected ({length},)")
        np.add(total, vec.astype(np.uint64, copy=False), out=total)
    return total
