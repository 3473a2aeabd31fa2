"""The peer addresses we accept, parsed and checked without libp2p.

An address is a multiaddr of one of these shapes (TCP, the only transport we run)::

    /ip4/<a.b.c.d>/tcp/<port>[/p2p/<peer id>]
    /ip6/<address>/tcp/<port>[/p2p/<peer id>]
    /dns4/<host name>/tcp/<port>[/p2p/<peer id>]      (and /dns6/)

The peer ID is an Ed25519 libp2p peer ID (``crypto.identity``). The address book, the
configuration (listen and bootstrap addresses) and ``peer/net/host.py`` all parse with
``parse_address``, so an address is judged the same wherever it comes from, and reading the
address book does not import libp2p; ``host.py`` converts a parsed address to libp2p's
``Multiaddr`` at its boundary.

Invariant: ``parse_address`` raises ``UserError``, and only that, for any text; the message
quotes the text (shortened) and says which part is wrong.

``check_ports_free`` probes listen addresses before the host binds them (py-libp2p's
SO_REUSEPORT would otherwise let two peers share a port: docs/libp2p-notes.md, 9).
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from gossiplearn.crypto.identity import is_peer_id
from gossiplearn.errors import UserError

MAX_ADDRESS_LENGTH = 256  # characters; a DNS name is at most 253, a peer ID about 52
HOST_PROTOCOLS = ("ip4", "ip6", "dns4", "dns6")
_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
SHAPE = "/ip4|ip6|dns4|dns6/<host>/tcp/<port>[/p2p/<peer id>]"


@dataclass(frozen=True, slots=True)
class PeerAddress:
    """A parsed address. ``str()`` gives it back in canonical form (IP addresses as Python's
    ``ipaddress`` writes them, ports without leading zeros)."""

    protocol: str  # one of HOST_PROTOCOLS
    host: str  # an IP address or a DNS name
    port: int  # 0..65535; 0 asks the system for a free port (listen addresses only)
    peer_id: str | None = None  # the peer expected there, when the address names one

    @property
    def transport(self) -> str:
        """The address without its ``/p2p/`` part."""
        return f"/{self.protocol}/{self.host}/tcp/{self.port}"

    def __str__(self) -> str:
        return self.transport + (f"/p2p/{self.peer_id}" if self.peer_id is not None else "")


def parse_address(text: str, *, need_peer_id: bool = False) -> PeerAddress:
    """Parse one address. ``need_peer_id``: it must end in ``/p2p/<peer id>`` (an address to
    dial a given member at). Raises ``UserError`` saying what is wrong with ``text``."""
    shown = repr(_cut(text, 80))

    def bad(why: str) -> UserError:
        return UserError(f"{shown} is not a valid multiaddr ({why}; expected {SHAPE})")

    if len(text) > MAX_ADDRESS_LENGTH:
        raise bad(f"longer than {MAX_ADDRESS_LENGTH} characters")
    if not text.startswith("/"):
        raise bad("it must start with /")
    parts = text[1:].removesuffix("/").split("/")
    if "" in parts:
        raise bad("an empty part")
    if parts[0] not in HOST_PROTOCOLS:
        raise bad(f"unsupported protocol {_cut(parts[0], 20)!r}")
    if len(parts) < 4:
        raise bad("no /tcp/<port>")
    protocol, host, tcp, port_text, *rest = parts
    host = _host(protocol, host, bad)
    if tcp != "tcp":
        raise bad(f"{_cut(tcp, 20)!r} where tcp was expected: TCP is the only transport")
    if not port_text.isascii() or not port_text.isdigit() or int(port_text) > 65535:
        raise bad(f"port {_cut(port_text, 20)!r} is not a number from 0 to 65535")
    peer_id = None
    if rest:
        if len(rest) != 2 or rest[0] != "p2p":
            raise bad(f"unexpected {_cut('/' + '/'.join(rest), 60)!r} after the port")
        peer_id = rest[1]
        if not is_peer_id(peer_id):
            raise bad(f"{_cut(peer_id, 60)!r} after /p2p/ is not a peer ID")
    if need_peer_id and peer_id is None:
        raise UserError(
            f"{shown} must end in /p2p/<peer id> (copy it from the peer's start output)"
        )
    return PeerAddress(protocol, host, int(port_text), peer_id)


def _host(protocol: str, host: str, bad: Callable[[str], UserError]) -> str:
    """``host`` checked (and canonical) for ``protocol``."""
    if protocol in ("ip4", "ip6"):
        kind = ipaddress.IPv4Address if protocol == "ip4" else ipaddress.IPv6Address
        try:
            address = str(kind(host))
        except ValueError:
            address = ""
        if not address or "%" in address:  # a zone (/ip6zone) is not something we dial
            raise bad(f"{_cut(host, 60)!r} is not an IPv{protocol[-1]} address")
        return address
    name = host.removesuffix(".")
    if not name or len(name) > 253 or not all(_LABEL.fullmatch(part) for part in name.split(".")):
        raise bad(f"{_cut(host, 60)!r} is not a DNS host name")
    return host


def _cut(text: str, limit: int) -> str:
    """``text``, cut to ``limit`` characters for a message."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_ports_free(addrs: Sequence[PeerAddress]) -> None:
    """Refuse a fixed TCP port that another process already listens on.

    py-libp2p binds with SO_REUSEPORT (for hole punching), so a second peer on the same port
    would start "successfully" and the kernel would split incoming connections between the two.
    A probe bind without SO_REUSEPORT fails while any listener holds the port.
    """
    for addr in addrs:
        if addr.protocol not in ("ip4", "ip6") or addr.port == 0:
            continue
        family = socket.AF_INET if addr.protocol == "ip4" else socket.AF_INET6
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((addr.host, addr.port))
            except OSError as exc:
                raise UserError(
                    f"cannot listen on {addr}: {exc.strerror} (is another peer or program using "
                    f"port {addr.port}? pick another port in --listen, or /tcp/0 for a free one)"
                ) from None
