"""The agent/relay wire protocol, byte for byte, without sockets."""

from __future__ import annotations

import random

import pytest

from intunnel.wire import protocol as p


def test_hello_encodes_to_exact_bytes():
    frame = p.encode(p.Hello(version=1, client="intunnel/1", local_port=3000, host_header=""))
    body = b'{"type":"hello","version":1,"client":"intunnel/1","local_port":3000,"host_header":""}'
    assert frame == len(body).to_bytes(4, "big") + body


def test_every_message_round_trips():
    messages = [
        p.Hello(client="x", local_port=1, host_header="localhost:3000"),
        p.Welcome(url="https://a.example.com", subdomain="a", session="s3cret", heartbeat_interval=10.0,
                  dead_peer_timeout=30.0, pool_size=4),
        p.Ping(7), p.Pong(7), p.OpenData(3), p.GoAway("restart"), p.Revoked("the token was regenerated"),
        p.Error("bad"), p.Bind("203.0.113.9"), p.DataReady(), p.DataRefused(3000, "connection refused"),
    ]
    stream = b"".join(p.encode(m) for m in messages)
    decoder = p.FrameDecoder()
    got = []
    for i in range(len(stream)):  # one byte at a time: framing must not care
        got += decoder.feed(stream[i:i + 1])
    assert got == messages


def test_decoder_keeps_raw_bytes_after_a_frame():
    decoder = p.FrameDecoder()
    assert decoder.feed(p.encode(p.DataReady()) + b"HTTP/1.1 200 OK\r\n", limit=1) == [p.DataReady()]
    assert decoder.take_rest() == b"HTTP/1.1 200 OK\r\n"


def _frame(body: bytes) -> bytes:
    return len(body).to_bytes(4, "big") + body


@pytest.mark.parametrize("frame, error", [
    ((p.MAX_FRAME_SIZE + 1).to_bytes(4, "big"), "exceeds"),
    (_frame(b"\xff\xfe"), "not UTF-8 JSON"),
    (_frame(b"abc"), "not UTF-8 JSON"),
    (_frame(b"[]"), "object with a type"),
    (_frame(b'{"type":"nope"}'), "unknown message type"),
    (_frame(b'{"type":"ping"}'), "missing field 'seq'"),
    (_frame(b'{"type":"ping","seq":"1"}'), "must be int"),
    (_frame(b'{"type":"ping","seq":true}'), "must be int"),
    (_frame(b'{"type":"welcome","url":1}'), "must be str"),
])
def test_bad_frames_are_protocol_errors(frame, error):
    with pytest.raises(p.ProtocolError, match=error):
        p.FrameDecoder().feed(frame)


def test_unknown_fields_are_ignored_for_forward_compatibility():
    body = b'{"type":"ping","seq":1,"future":true}'
    assert p.FrameDecoder().feed(len(body).to_bytes(4, "big") + body) == [p.Ping(1)]


def test_relay_session_requires_hello_first_and_rejects_agent_only_messages():
    relay = p.ControlSession(p.RELAY)
    with pytest.raises(p.ProtocolError, match="received 'ping' in state await_hello"):
        relay.receive_data(p.encode(p.Ping(1)), now=1.0)
    relay = p.ControlSession(p.RELAY)
    assert relay.receive_data(p.encode(p.Hello()), now=1.0) == [p.Hello()]
    assert relay.state == p.ACTIVE
    relay.send(p.Welcome(url="u", subdomain="s", session="x", heartbeat_interval=1, dead_peer_timeout=3))
    with pytest.raises(p.ProtocolError):
        relay.receive_data(p.encode(p.Hello()), now=2.0)  # a second hello
    with pytest.raises(p.ProtocolError):
        p.ControlSession(p.RELAY).send(p.Ping(1))  # the relay can't ping before the hello


def test_agent_session_final_messages_close_it():
    agent = p.ControlSession(p.AGENT)
    agent.send(p.Hello())
    assert agent.state == p.AWAIT_WELCOME
    agent.receive_data(p.encode(p.Welcome(url="u", subdomain="s", session="x",
                                          heartbeat_interval=1, dead_peer_timeout=3)), now=0)
    assert agent.state == p.ACTIVE
    out = agent.receive_data(p.encode(p.Ping(1)) + p.encode(p.Revoked("gone")) + p.encode(p.Ping(2)), now=1)
    assert out == [p.Ping(1), p.Revoked("gone")] and agent.state == p.CLOSED
    assert agent.receive_data(p.encode(p.Ping(3)), now=2) == []


def test_dead_peer_detection_uses_last_received_bytes():
    s = p.ControlSession(p.RELAY, now=100.0, dead_peer_timeout=30.0)
    assert not s.is_dead(129.0) and s.is_dead(130.5)
    s.receive_data(b"\x00", now=129.0)  # any bytes are proof of life
    assert not s.is_dead(150.0)


def test_backoff_is_capped_exponential_with_jitter():
    rng = random.Random(1)
    delays = [p.backoff_delay(n, rng) for n in range(30)]
    for n, d in enumerate(delays):
        ceiling = min(p.RECONNECT_MAX_DELAY, p.RECONNECT_MIN_DELAY * 2 ** n)
        assert ceiling / 2 <= d <= ceiling
    assert max(delays) <= p.RECONNECT_MAX_DELAY
    assert len({round(d, 6) for d in delays[-10:]}) > 1  # jittered, not constant


def test_oversized_outgoing_message_is_refused():
    with pytest.raises(p.ProtocolError):
        p.encode(p.Error("x" * (p.MAX_FRAME_SIZE + 1)))


# --- the session's own access rules in the hello (client --basic-auth/--allow-ip/--deny-ip) ---

RULES = {"basic_auth": ["bob:builder123"], "ip_allow": ["10.0.0.0/8"], "ip_deny": ["127.0.0.2"]}


@pytest.mark.parametrize("body, hello", [
    # an old client: no field at all (and the encoded hello without rules is byte for byte as before)
    (b'{"type":"hello","version":1,"client":"c","local_port":1,"host_header":""}',
     p.Hello(client="c", local_port=1)),
    (b'{"type":"hello","client":"c","access":null}', p.Hello(client="c")),  # null: none
    (b'{"type":"hello","access":{}}', p.Hello(access={})),
    (b'{"type":"hello","access":{"basic_auth":["bob:builder123"],"ip_allow":["10.0.0.0/8"],'
     b'"ip_deny":["127.0.0.2"]}}', p.Hello(access=RULES)),
])
def test_hello_access_field_decodes(body, hello):
    assert p.FrameDecoder().feed(_frame(body)) == [hello]


@pytest.mark.parametrize("body", [
    b'{"type":"hello","access":[]}',
    b'{"type":"hello","access":"bob:builder123"}',
    b'{"type":"hello","access":1}',
    b'{"type":"hello","access":true}',
])
def test_hello_access_must_be_an_object(body):
    with pytest.raises(p.ProtocolError, match="field 'access' must be dict"):
        p.FrameDecoder().feed(_frame(body))


def test_hello_access_encodes_and_round_trips_and_is_left_out_when_none():
    assert b'"access"' not in p.encode(p.Hello(client="c"))
    frame = p.encode(p.Hello(client="c", access=RULES))
    assert frame.endswith(b',"access":{"basic_auth":["bob:builder123"],"ip_allow":["10.0.0.0/8"],'
                          b'"ip_deny":["127.0.0.2"]}}')
    assert p.FrameDecoder().feed(frame) == [p.Hello(client="c", access=RULES)]


@pytest.mark.parametrize("message", [
    p.Welcome(url="u", subdomain="s", session="x", heartbeat_interval=1.0, dead_peer_timeout=3.0,
              access="basic auth (1 user)"),
    p.Welcome(url="u", subdomain="s", session="x", heartbeat_interval=1.0, dead_peer_timeout=3.0),
    p.Error("the relay refused this session's access rules: access.ip_allow: ...", p.ACCESS_INVALID),
    p.Error("bad"),
])
def test_welcome_access_and_error_code_round_trip(message):
    assert p.FrameDecoder().feed(p.encode(message)) == [message]


def test_an_old_relays_welcome_has_no_access_and_an_old_error_no_code():
    welcome = b'{"type":"welcome","url":"u","subdomain":"s","session":"x","heartbeat_interval":1,' \
              b'"dead_peer_timeout":3}'
    assert p.FrameDecoder().feed(_frame(welcome))[0].access == ""
    assert p.FrameDecoder().feed(_frame(b'{"type":"error","message":"m"}')) == [p.Error("m", "")]


def test_a_refused_hello_ends_both_sessions_with_the_error():
    """The relay answers an invalid rule with a final Error (code ACCESS_INVALID) right after the hello."""
    relay, agent = p.ControlSession(p.RELAY), p.ControlSession(p.AGENT)
    relay.receive_data(agent.send(p.Hello(access={"ip_allow": ["nope"]})), now=0)
    refusal = relay.send(p.Error("refused", p.ACCESS_INVALID))
    assert relay.state == p.CLOSED
    assert agent.receive_data(refusal, now=0) == [p.Error("refused", p.ACCESS_INVALID)]
    assert agent.state == p.CLOSED


# --- the tunnel's stored local port in the Welcome (issue 14, item 8) ---

def test_welcome_local_port_round_trips():
    welcome = p.Welcome(url="u", subdomain="s", session="x", heartbeat_interval=1.0, dead_peer_timeout=3.0,
                        local_port=3000)
    frame = p.encode(welcome)
    assert frame.endswith(b',"access":"","local_port":3000}')
    assert p.FrameDecoder().feed(frame) == [welcome]


def test_an_old_relays_welcome_has_no_local_port():
    welcome = b'{"type":"welcome","url":"u","subdomain":"s","session":"x","heartbeat_interval":1,' \
              b'"dead_peer_timeout":3,"pool_size":8,"access":""}'
    assert p.FrameDecoder().feed(_frame(welcome))[0].local_port == 0


def test_an_old_client_reads_a_new_welcome_by_the_fields_it_knows():
    """An older client's Welcome lacks local_port; its decoder takes the fields it knows and
    ignores the rest (decode_body's rule, shown here on the new frame with one more field)."""
    frame = p.encode(p.Welcome(url="u", subdomain="s", session="x", heartbeat_interval=1.0,
                               dead_peer_timeout=3.0, local_port=3000))
    newer = frame[4:-1] + b',"a_later_field":{"x":1}}'
    assert p.decode_body(newer) == p.Welcome(url="u", subdomain="s", session="x", heartbeat_interval=1.0,
                                             dead_peer_timeout=3.0, local_port=3000)


@pytest.mark.parametrize("value", [b'"3000"', b"true", b"3000.5", b"[3000]"])
def test_welcome_local_port_must_be_an_int(value):
    body = b'{"type":"welcome","url":"u","subdomain":"s","session":"x","heartbeat_interval":1,' \
           b'"dead_peer_timeout":3,"local_port":' + value + b"}"
    with pytest.raises(p.ProtocolError, match="field 'local_port' must be int"):
        p.decode_body(body)
