"""The libp2p transport: with ``muxer`` (our yamux), the only module that imports libp2p.

The host is built with Noise (XX, Ed25519 identities) as its only security protocol and yamux
as its only muxer: py-libp2p's default host also offers plaintext, which lets a dialer claim any
peer ID (see docs/libp2p-notes.md). With a consortium key, every TCP connection is wrapped in
libp2p's private-network layer (PSK) before anything else is said, so a dialer without the key
cannot even negotiate a protocol. Right after the Noise handshake authenticates the remote, the
node's *gate* (member list, bans) may refuse it: the connection is closed before the muxer is
negotiated, so no stream, and no gossip protocol, can ever run with a refused peer.
libp2p and multiaddr exceptions are translated to ``TransportError`` here, once, by
``except Exception`` clauses, which let ``trio.Cancelled`` (a ``BaseException``) through. Stream
handlers run behind such a boundary, because an exception escaping a py-libp2p stream handler
takes the whole host down.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import multiaddr
import trio
from libp2p import new_host
from libp2p.abc import IHost, INetStream, IRawConnection, ISecureConn
from libp2p.crypto.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from libp2p.crypto.keys import KeyPair
from libp2p.crypto.x25519 import create_new_key_pair as new_x25519_key_pair
from libp2p.custom_types import TProtocol
from libp2p.network.config import ConnectionConfig
from libp2p.network.stream.exceptions import StreamEOF
from libp2p.peer.id import ID
from libp2p.security.exceptions import HandshakeFailure
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport
from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX_PROTOCOL_ID
from libp2p.utils.address_validation import expand_wildcard_address

from gossiplearn.crypto.consortium import ConsortiumKey
from gossiplearn.crypto.identity import Identity
from gossiplearn.errors import TransportError, UserError
from gossiplearn.peer.net.addresses import check_ports_free, parse_address
from gossiplearn.peer.net.muxer import GuardedYamux, install_muxer
from gossiplearn.peer.net.transport import Gate, Handler, Stream, open_gate

log = logging.getLogger(__name__)

ADDR_TTL = 3600  # seconds a learnt address stays in libp2p's peerstore


class _RootNoise(logging.Filter):
    """py-libp2p logs "Error getting transport addresses" on the *root* logger for every inbound
    connection when a PSK is in use (docs/libp2p-notes.md); it means nothing to a user."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Error getting transport addresses")


_ROOT_NOISE = _RootNoise()


def _quiet_libp2p() -> None:
    """libp2p logs routine events (failed dials, closing streams) at WARNING/ERROR; a user's
    console should show our own account of what matters instead."""
    logging.getLogger("libp2p").setLevel(logging.CRITICAL)
    logging.getLogger("multiaddr").setLevel(logging.CRITICAL)
    root = logging.getLogger()
    if _ROOT_NOISE not in root.filters:
        root.addFilter(_ROOT_NOISE)


class _GatedNoise(NoiseTransport):
    """Noise, then the node's gate on the authenticated remote peer ID (member list, bans).

    A refused peer's connection is closed and the upgrade fails with ``HandshakeFailure``, before
    the muxer is negotiated: no stream can be opened on it, in either direction.
    """

    def __init__(self, key_pair: KeyPair, owner: _GateHolder) -> None:
        super().__init__(key_pair, noise_privkey=new_x25519_key_pair().private_key)
        self._owner = owner

    async def secure_inbound(self, conn: IRawConnection) -> ISecureConn:
        return await self._admit(await super().secure_inbound(conn))

    async def secure_outbound(self, conn: IRawConnection, peer_id: ID) -> ISecureConn:
        return await self._admit(await super().secure_outbound(conn, peer_id))

    async def _admit(self, secure: ISecureConn) -> ISecureConn:
        remote = str(secure.get_remote_peer())
        reason = self._owner.gate(remote)
        if reason is None:
            return secure
        with trio.CancelScope(shield=True), trio.move_on_after(2):
            try:
                await secure.close()
            except Exception:
                log.debug("closing refused connection from %s failed", remote, exc_info=True)
        raise HandshakeFailure(f"peer {remote} refused: {reason}")


class _GateHolder:
    """Lets the transport's gate be set after the host (and its Noise transport) is built."""

    def __init__(self) -> None:
        self.gate: Gate = open_gate


def _multiaddr(text: str) -> multiaddr.Multiaddr:
    """A parsed address (``addresses.parse_address``) as libp2p's ``Multiaddr``; ``UserError``
    should the multiaddr library refuse what we accept."""
    try:
        return multiaddr.Multiaddr(text)
    except Exception as exc:  # noqa: BLE001 - multiaddr raises assorted types
        raise UserError(f"{text!r} is not a valid multiaddr ({exc})") from None


def _dialable(peer_id: str, addrs: Sequence[str]) -> list[multiaddr.Multiaddr]:
    """The addresses of ``peer_id`` we can dial (``addresses.parse_address``); a peer may
    advertise others (a newer transport), which are skipped."""
    out = []
    for text in addrs:
        try:
            out.append(_multiaddr(str(parse_address(text))))
        except UserError as exc:
            log.debug("address of %s skipped: %s", peer_id, exc)
    return out


class Libp2pStream:
    """Adapts a py-libp2p stream to ``Stream``, translating its exceptions."""

    def __init__(self, stream: INetStream) -> None:
        self._s = stream
        self._remote = str(stream.muxed_conn.peer_id)

    @property
    def remote_peer(self) -> str:
        return self._remote

    async def read(self, max_bytes: int) -> bytes:
        try:
            return bytes(await self._s.read(max_bytes))
        except StreamEOF:
            return b""
        except Exception as exc:  # noqa: BLE001 - libp2p raises many types; translate once
            raise TransportError(f"read from {self._remote} failed: {exc!r}") from None

    async def write(self, data: bytes) -> None:
        try:
            await self._s.write(data)
        except Exception as exc:  # noqa: BLE001
            raise TransportError(f"write to {self._remote} failed: {exc!r}") from None

    async def close(self) -> None:
        try:
            await self._s.close()
        except Exception as exc:  # noqa: BLE001
            raise TransportError(f"closing stream to {self._remote} failed: {exc!r}") from None

    async def reset(self) -> None:
        with trio.CancelScope(shield=True), trio.move_on_after(2):
            try:
                await self._s.reset()
            except Exception:
                log.debug("reset of stream to %s failed", self._remote, exc_info=True)


def _key_pair(identity: Identity) -> KeyPair:
    private = Ed25519PrivateKey.from_bytes(identity.seed)
    public = private.get_public_key()
    assert isinstance(public, Ed25519PublicKey)
    return KeyPair(private, public)


class Libp2pTransport:
    """``Transport`` on a py-libp2p host (TCP + Noise + yamux). Use ``open``."""

    def __init__(self, host: IHost, dial_timeout: float, gate: _GateHolder) -> None:
        self._host = host
        self._dial_timeout = dial_timeout
        self._gate = gate

    @classmethod
    @asynccontextmanager
    async def open(
        cls,
        identity: Identity,
        listen: Sequence[str],
        *,
        dial_timeout: float = 10.0,
        consortium_key: ConsortiumKey | None = None,
    ) -> AsyncIterator[Libp2pTransport]:
        """Start a host listening on ``listen``; closes it on exit. Raises UserError.

        With ``consortium_key``, only peers holding the same key can connect (libp2p private
        network); others fail within ``dial_timeout``.
        """
        _quiet_libp2p()
        listening = [parse_address(a) for a in listen]
        check_ports_free(listening)
        addrs = [_multiaddr(str(a)) for a in listening]
        kp = _key_pair(identity)
        holder = _GateHolder()
        host = new_host(
            key_pair=kp,
            sec_opt={NOISE_PROTOCOL_ID: _GatedNoise(kp, holder)},
            muxer_opt={YAMUX_PROTOCOL_ID: GuardedYamux},  # type: ignore[dict-item]
            psk=consortium_key.hex if consortium_key is not None else None,
            listen_addrs=addrs,
            connection_config=ConnectionConfig(
                dial_timeout=dial_timeout,
                inbound_upgrade_timeout=dial_timeout,
                outbound_upgrade_timeout=dial_timeout,
            ),
        )
        if str(host.get_id()) != identity.peer_id:  # our derivation must match libp2p's
            raise AssertionError("peer ID derivation disagrees with libp2p")
        install_muxer(host)
        try:
            async with host.run(listen_addrs=addrs):
                transport = cls(host, dial_timeout, holder)
                try:
                    yield transport
                finally:
                    with trio.CancelScope(shield=True), trio.move_on_after(5):
                        await host.close()
        except OSError as exc:
            raise UserError(
                f"cannot listen on {', '.join(listen)}: {exc.strerror or exc}"
            ) from None

    @property
    def peer_id(self) -> str:
        return str(self._host.get_id())

    def addrs(self) -> list[str]:
        out: list[str] = []
        suffix = f"/p2p/{self.peer_id}"
        for addr in self._host.get_transport_addrs():
            for concrete in expand_wildcard_address(addr):
                text = str(concrete)
                if text.endswith(suffix):
                    text = text[: -len(suffix)]
                out.append(text + suffix)
        return list(dict.fromkeys(out))

    def set_handler(self, protocol: str, handler: Handler) -> None:
        async def boundary(stream: INetStream) -> None:
            ours = Libp2pStream(stream)
            try:
                await handler(ours)
            except Exception:
                log.exception("handler for %s from %s failed", protocol, ours.remote_peer)
                await ours.reset()

        self._host.set_stream_handler(TProtocol(protocol), boundary)

    def set_gate(self, gate: Gate) -> None:
        self._gate.gate = gate

    async def disconnect(self, peer_id: str) -> None:
        try:
            peer = ID.from_base58(peer_id)
            with trio.move_on_after(self._dial_timeout):
                await self._host.disconnect(peer)
        except Exception:
            log.debug("disconnecting %s failed", peer_id, exc_info=True)

    async def connect(self, addr: str) -> str:
        try:
            address = parse_address(addr, need_peer_id=True)
            assert address.peer_id is not None
            peer = ID.from_base58(address.peer_id)
            transport_addr = _multiaddr(address.transport)
        except UserError as exc:
            raise TransportError(str(exc)) from None
        except Exception as exc:  # noqa: BLE001
            raise TransportError(f"{addr!r} is not a dialable peer address: {exc}") from None
        await self._dial(peer, [transport_addr])
        return str(peer)

    async def _dial(self, peer: ID, addrs: Sequence[multiaddr.Multiaddr]) -> None:
        network = self._host.get_network()
        if peer in self._host.get_connected_peers():
            return
        if addrs:
            self._host.get_peerstore().add_addrs(peer, list(addrs), ADDR_TTL)
        # py-libp2p refuses every dial to a peer for 60 s after one failure; our own backoff
        # (PeerView) decides when to retry, so clear its cache first.
        network.unblock_peer(peer)  # type: ignore[attr-defined]  # on Swarm, not the ABC
        try:
            with trio.fail_after(self._dial_timeout):
                await network.dial_peer(peer)
        except trio.TooSlowError:
            raise TransportError(f"dial to {peer} timed out after {self._dial_timeout} s") from None
        except Exception as exc:  # noqa: BLE001
            raise TransportError(f"dial to {peer} failed: {exc}") from None

    async def open_stream(self, peer_id: str, protocol: str, addrs: Sequence[str] = ()) -> Stream:
        try:
            peer = ID.from_base58(peer_id)
        except Exception as exc:  # noqa: BLE001
            raise TransportError(f"bad peer record {peer_id}: {exc}") from None
        await self._dial(peer, _dialable(peer_id, addrs))
        try:
            with trio.fail_after(self._dial_timeout):
                stream = await self._host.new_stream(peer, [TProtocol(protocol)])
        except trio.TooSlowError:
            raise TransportError(f"opening {protocol} to {peer_id} timed out") from None
        except Exception as exc:  # noqa: BLE001
            raise TransportError(f"opening {protocol} to {peer_id} failed: {exc}") from None
        return Libp2pStream(stream)

    def connected_peers(self) -> list[str]:
        return [str(p) for p in self._host.get_connected_peers()]
