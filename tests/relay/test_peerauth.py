"""The relays' opening handshake (relay/peerauth.py): pure, table-driven and property-based."""

from __future__ import annotations

import pytest
from hypothesis import given, settings as hsettings, strategies as st

from intunnel.relay import peerauth
from intunnel.relay.peerauth import PeerAuthError, Verifier, opening
from intunnel.wire.http1 import parse_request_head

SECRET = b"s" * 40
NOW = 1_800_000_000.0


def parts(raw: bytes):
    head = parse_request_head(raw[:-4])
    return head.method, head.target, head.get("upgrade"), head.get(peerauth.HEADER)


def header_of(**changes) -> str:
    fields = dict(zip(("from", "to", "time", "nonce", "mac"),
                      parts(opening(SECRET, "relay-a", "relay-b", NOW, "n1"))[3].split(" ")))
    fields.update(changes)
    return " ".join(fields.values())


def test_an_opening_is_accepted_once_and_names_its_sender():
    v = Verifier(SECRET, "relay-b")
    raw = opening(SECRET, "relay-a", "relay-b", NOW)
    assert v.check(*parts(raw), NOW + 1) == "relay-a"
    with pytest.raises(PeerAuthError, match="replayed"):
        v.check(*parts(raw), NOW + 2)


@pytest.mark.parametrize("method, target, upgrade, value, now, why", [
    ("POST", peerauth.PATH, peerauth.UPGRADE, header_of(), NOW, "not a peer"),
    ("GET", "/", peerauth.UPGRADE, header_of(), NOW, "not a peer"),
    ("GET", peerauth.PATH, "websocket", header_of(), NOW, "not a peer"),
    ("GET", peerauth.PATH, peerauth.UPGRADE, None, NOW, "malformed"),
    ("GET", peerauth.PATH, peerauth.UPGRADE, "a b c", NOW, "malformed"),
    ("GET", peerauth.PATH, peerauth.UPGRADE, header_of(mac="0" * 64), NOW, "bad signature"),
    ("GET", peerauth.PATH, peerauth.UPGRADE, header_of(**{"from": "relay-x"}), NOW, "bad signature"),
    ("GET", peerauth.PATH, peerauth.UPGRADE, header_of(time=str(int(NOW) + 1)), NOW, "bad signature"),
    ("GET", peerauth.PATH, peerauth.UPGRADE, header_of(nonce="n2"), NOW, "bad signature"),
    ("GET", peerauth.PATH, peerauth.UPGRADE, header_of(), NOW + peerauth.SKEW + 1, "clock"),
    ("GET", peerauth.PATH, peerauth.UPGRADE, header_of(), NOW - peerauth.SKEW - 1, "clock"),
])
def test_refused_openings(method, target, upgrade, value, now, why):
    with pytest.raises(PeerAuthError, match=why):
        Verifier(SECRET, "relay-b").check(method, target, upgrade, value, now)


def test_an_opening_for_another_relay_or_with_another_secret_is_refused():
    raw = opening(SECRET, "relay-a", "relay-c", NOW)
    with pytest.raises(PeerAuthError, match="meant for relay 'relay-c'"):
        Verifier(SECRET, "relay-b").check(*parts(raw), NOW)
    with pytest.raises(PeerAuthError, match="bad signature"):
        Verifier(b"t" * 40, "relay-c").check(*parts(raw), NOW)


def test_a_short_secret_is_refused_at_start():
    with pytest.raises(ValueError, match="at least 32"):
        Verifier(b"short", "relay-b")


def test_nonces_are_forgotten_after_the_window_and_bounded():
    v = Verifier(SECRET, "relay-b")
    for i in range(10):
        v.check(*parts(opening(SECRET, "relay-a", "relay-b", NOW, f"n{i}")), NOW)
    assert len(v.seen) == 10
    v.check(*parts(opening(SECRET, "relay-a", "relay-b", NOW + 3 * peerauth.SKEW, "late")), NOW + 3 * peerauth.SKEW)
    assert list(v.seen) == ["late"]


ids = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789._:-", min_size=1, max_size=64)


@hsettings(max_examples=200, deadline=None)
@given(sender=ids, receiver=ids, skew=st.floats(-peerauth.SKEW + 1, peerauth.SKEW - 1),
       secret=st.binary(min_size=32, max_size=64))
def test_every_fresh_opening_verifies_with_the_same_secret(sender, receiver, skew, secret):
    raw = opening(secret, sender, receiver, NOW)
    assert Verifier(secret, receiver).check(*parts(raw), NOW + skew) == sender


@hsettings(max_examples=200, deadline=None)
@given(position=st.integers(0, 200), byte=st.integers(0x21, 0x7e))
def test_any_changed_character_of_the_header_is_refused(position, byte):
    value = parts(opening(SECRET, "relay-a", "relay-b", NOW, "n1"))[3]
    position %= len(value)
    if value[position] == chr(byte) or value[position] == " " or chr(byte) == " ":
        return
    forged = value[:position] + chr(byte) + value[position + 1:]
    with pytest.raises(PeerAuthError):
        Verifier(SECRET, "relay-b").check("GET", peerauth.PATH, peerauth.UPGRADE, forged, NOW)


def test_the_secret_file_is_read_or_the_setting_is_named(tmp_path):
    from intunnel.errors import ConfigError
    from intunnel.relay.peers import read_secret
    from intunnel.settings import load_settings

    def settings_for(path):
        return load_settings(env={}, overrides={"database_url": "postgresql://u@db/intunnel",
                                                "relay_peer_listen": "127.0.0.1:0",
                                                "relay_peer_secret_file": str(path)})
    good = tmp_path / "good"
    good.write_text("k" * 48 + "\n")
    assert read_secret(settings_for(good)) == b"k" * 48
    short = tmp_path / "short"
    short.write_text("k" * 31)
    with pytest.raises(ConfigError, match="relay_peer_secret_file.*31 bytes"):
        read_secret(settings_for(short))
    with pytest.raises(ConfigError, match="relay_peer_secret_file.*cannot read"):
        read_secret(settings_for(tmp_path / "missing"))
