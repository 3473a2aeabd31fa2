"""Peer addresses (peer/net/addresses.py): the shapes we accept and the messages for the rest."""

from __future__ import annotations

import contextlib
import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gossiplearn.crypto.identity import Identity
from gossiplearn.errors import UserError
from gossiplearn.peer.net.addresses import PeerAddress, parse_address

PEER = Identity(bytes(range(32))).peer_id  # fixed: test ids must be the same in every xdist worker


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("/ip4/127.0.0.1/tcp/7701", PeerAddress("ip4", "127.0.0.1", 7701)),
        ("/ip4/0.0.0.0/tcp/0", PeerAddress("ip4", "0.0.0.0", 0)),
        (f"/ip4/10.0.0.1/tcp/1/p2p/{PEER}", PeerAddress("ip4", "10.0.0.1", 1, PEER)),
        ("/ip6/0:0::1/tcp/4001", PeerAddress("ip6", "::1", 4001)),  # canonical form
        ("/dns4/peer.example.com/tcp/4001", PeerAddress("dns4", "peer.example.com", 4001)),
        (f"/dns6/localhost/tcp/65535/p2p/{PEER}", PeerAddress("dns6", "localhost", 65535, PEER)),
        ("/ip4/1.2.3.4/tcp/01/", PeerAddress("ip4", "1.2.3.4", 1)),  # as the multiaddr library
    ],
)
def test_accepted_shapes(text: str, expected: PeerAddress) -> None:
    assert parse_address(text) == expected


def test_str_gives_the_address_back_and_transport_drops_the_peer() -> None:
    text = f"/ip4/10.0.0.1/tcp/4001/p2p/{PEER}"
    address = parse_address(text)
    assert str(address) == text
    assert address.transport == "/ip4/10.0.0.1/tcp/4001"
    assert parse_address(str(parse_address("/ip6/0:0::1/tcp/1"))) == parse_address("/ip6/::1/tcp/1")


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("not a multiaddr", "must start with /"),
        ("/ip4/1.2.3.4", "no /tcp/<port>"),
        ("/unix/tmp/peer.sock", "unsupported protocol 'unix'"),
        ("/ip4/1.2.3.4/udp/1/quic", "'udp' where tcp was expected"),
        ("/ip4/1.2.3.4//tcp/1", "an empty part"),
        ("/ip4/300.1.1.1/tcp/1", "'300.1.1.1' is not an IPv4 address"),
        ("/ip4/01.2.3.4/tcp/1", "is not an IPv4 address"),
        ("/ip6/fe80::1%eth0/tcp/1", "is not an IPv6 address"),
        ("/ip6/1.2.3.4/tcp/1", "is not an IPv6 address"),
        ("/dns4/under_score.example/tcp/1", "is not a DNS host name"),
        ("/dns4/-lead.example/tcp/1", "is not a DNS host name"),
        ("/ip4/1.2.3.4/tcp/65536", "port '65536' is not a number from 0 to 65535"),
        ("/ip4/1.2.3.4/tcp/-1", "is not a number"),
        ("/ip4/1.2.3.4/tcp/ 1", "is not a number"),
        ("/ip4/1.2.3.4/tcp/1/p2p/QmNotAPeerId", "'QmNotAPeerId' after /p2p/ is not a peer ID"),
        ("/ip4/1.2.3.4/tcp/1/ws", "unexpected '/ws' after the port"),
        ("/" + "x" * 300, "longer than 256 characters"),
    ],
)
def test_refused_with_what_is_wrong(text: str, says: str) -> None:
    with pytest.raises(UserError) as info:
        parse_address(text)
    message = str(info.value)
    assert says in message
    assert "is not a valid multiaddr" in message and "/tcp/<port>" in message  # the shape


def test_a_dial_address_must_name_its_peer() -> None:
    with pytest.raises(UserError, match=r"must end in /p2p/<peer id> \(copy it from the peer"):
        parse_address("/ip4/127.0.0.1/tcp/1", need_peer_id=True)
    assert parse_address(f"/ip4/127.0.0.1/tcp/1/p2p/{PEER}", need_peer_id=True).peer_id == PEER


@pytest.mark.parametrize("tail", ["x" * 200, "x" * 100_000])
def test_the_message_stays_short_whatever_the_text(tail: str) -> None:
    with pytest.raises(UserError) as info:
        parse_address("/ip4/1.2.3.4/tcp/1/p2p/" + tail)
    assert len(str(info.value)) < 300


@given(st.text(max_size=80))
def test_any_text_raises_only_user_error(text: str) -> None:
    with contextlib.suppress(UserError):
        parse_address(text)


@given(
    st.builds(
        "/{}/{}/tcp/{}".format,
        st.sampled_from(["ip4", "ip6"]),
        st.ip_addresses().map(str),
        st.integers(0, 65535),
    )
)
def test_what_we_accept_libp2p_accepts_alike(text: str) -> None:
    multiaddr = pytest.importorskip("multiaddr")
    try:
        ours = parse_address(text)
    except UserError:
        return  # an ip4 address under /ip6, or the reverse
    assert parse_address(str(multiaddr.Multiaddr(str(ours)))) == ours


def test_parsing_does_not_import_libp2p() -> None:
    code = (
        "import sys, gossiplearn.peer.net.addresses, gossiplearn.peer.home.addressbook\n"
        "sys.exit(any(m.split('.')[0] in ('libp2p', 'multiaddr') for m in sys.modules))"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
