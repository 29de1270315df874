"""Upstream keep-alive: a finished visitor's data connection (still spliced to its keep-alive
connection to the local app) serves the tunnel's next visitor; only when that is safe."""

from __future__ import annotations

import logging
import socket
import struct
import threading
import time

import pytest

from intunnel.relay.proxy import Resp
from tests.support.tunnel import (ClientThread, HttpUpstream, WebSocketUpstream, make_tunnel, read_response,
                                  tunnel_setup, wait_for)


def one_request(port: int, host: str, path: str = "/", method: str = "GET", extra: str = "Connection: close\r\n",
                half_close: bool = False) -> tuple[int, dict, bytes]:
    """A raw request; reads until the relay closes the connection (it must, within 5 s)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(f"{method} {path} HTTP/1.1\r\nHost: {host}\r\n{extra}\r\n".encode())
        if half_close:
            s.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := s.recv(65536):  # a timeout here means the relay left the visitor hanging
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (l.partition(":") for l in lines[1:])}
    return int(lines[0].split()[1]), headers, body


def local_conn(t, path="/", **kwargs) -> int:
    status, headers, _ = one_request(t.relay.port, t.host, path, **kwargs)
    assert status in (200, 204, 304), status
    return int(headers["x-upstream-conn"])


def parked(t) -> int:
    session = t.relay.relay.sessions.get(t.host.split(".")[0])
    return len(session.parked) if session else 0


def test_next_visitor_reuses_the_local_connection_and_connection_close_is_hop_by_hop(settings, db):
    with tunnel_setup(settings) as t:
        first = local_conn(t)
        wait_for(lambda: parked(t) == 1, 5, message="data connection parked")
        # Each visitor asked Connection: close and got its connection closed by the relay
        # (one_request read to EOF); the app kept its keep-alive connection for the next one.
        assert [local_conn(t) for _ in range(5)] == [first] * 5
        assert all("Connection" not in headers for _, _, headers in t.upstream.seen), t.upstream.seen
        # A visitor that half-closes after its request gets the whole answer, and reuse goes on.
        assert local_conn(t, half_close=True) == first
        # Empty bodies (HEAD, 204, 304) end where they should.
        assert local_conn(t, method="HEAD") == first
        assert local_conn(t, "/status?code=204") == first
        assert local_conn(t, "/status?code=304") == first
        status, headers, body = one_request(t.relay.port, t.host, "/chunked?parts=2")
        assert body == b"7\r\npart 0\n\r\n7\r\npart 1\n\r\n0\r\n\r\n"
        assert local_conn(t) == first
        # 100-continue: the interim answer doesn't end the exchange.
        status, headers, body = one_request(
            t.relay.port, t.host, "/", "POST",
            "Connection: close\r\nExpect: 100-continue\r\nContent-Length: 0\r\n")
        assert status in (100, 200)
        assert local_conn(t) == first


@pytest.mark.parametrize("path", ["/until-close", "/closing"])
def test_a_connection_that_ends_with_its_response_is_not_reused(settings, db, path):
    with tunnel_setup(settings) as t:
        status, headers, body = one_request(t.relay.port, t.host, path)
        assert status == 200 and body in (b"all of it\n", b"bye\n")
        used = int(headers["x-upstream-conn"])
        assert local_conn(t) != used


def test_upgraded_connection_is_never_reused(settings, db):
    from websockets.sync.client import connect
    with WebSocketUpstream() as ws_up, tunnel_setup(settings, upstream=ws_up) as t:
        sock = socket.create_connection(("127.0.0.1", t.relay.port), timeout=5)
        with connect(f"ws://{t.host}:{t.relay.port}/", sock=sock) as ws:
            ws.send("hi")
            assert ws.recv(5) == "hi"
        time.sleep(0.3)  # give a wrong implementation the time to park it
        assert parked(t) == 0


def test_reuse_keeps_host_routing_exact(settings, db):
    with tunnel_setup(settings) as t, HttpUpstream() as up2:
        other = make_tunnel(settings, "other", up2.port)
        with ClientThread(t.relay.url, other.token, up2.port) as c2:
            c2.wait_connected()
            for _ in range(3):
                for host, upstream in ((t.host, t.upstream), ("other.localhost", up2)):
                    status, headers, _ = one_request(t.relay.port, host)
                    assert status == 200 and int(headers["x-upstream-port"]) == upstream.port


def test_parked_connections_expire_and_reuse_can_be_turned_off(settings, db):
    with tunnel_setup(settings.replace(relay_upstream_keepalive=0.3)) as t:
        first = local_conn(t)
        assert local_conn(t) == first
        wait_for(lambda: parked(t) == 0, 3, message="parked connection expired")
        assert local_conn(t) != first
    with tunnel_setup(settings.replace(relay_upstream_keepalive=0), subdomain="nokeep") as t:
        seen = {local_conn(t) for _ in range(3)}
        assert len(seen) == 3 and parked(t) == 0
        assert all(h.get("Connection") == "close" for _, _, h in t.upstream.seen)


def test_keep_alive_visitors_park_their_data_connection_when_they_leave(settings, db):
    """Every response is followed (the state machine needs each one's end), so a keep-alive
    visitor that leaves between requests parks its data connection for the next visitor."""
    with tunnel_setup(settings) as t:
        status, headers, _ = t.get("/")  # http.client: keep-alive, then it closes the socket
        assert status == 200
        wait_for(lambda: parked(t) == 1, 5, message="data connection parked")
        assert local_conn(t) == int(headers["x-upstream-conn"])


def test_a_hand_made_agents_response_parks_its_data_connection(settings, db):
    """A hand-made agent (DataReady after the Bind, then the response): the data connection
    is parked once the visitor that asked Connection: close has its answer."""
    from intunnel.wire import protocol as p
    from tests.support.tunnel import RelayThread

    def upgrade(path: str, header: str) -> tuple[socket.socket, bytes]:
        s = socket.create_connection(("127.0.0.1", relay.port), timeout=5)
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: localhost\r\nUpgrade: intunnel\r\n"
                  f"Connection: Upgrade\r\n{header}\r\n\r\n".encode())
        data = b""
        while b"\r\n\r\n" not in data:
            data += s.recv(65536)
        head, _, rest = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head
        return s, rest

    with RelayThread(settings) as relay:
        tunnel = make_tunnel(settings, "handmade", 3000)
        control, rest = upgrade(p.AGENT_PATH, f"Authorization: Bearer {tunnel.token}")
        control.sendall(p.encode(p.Hello()))
        decoder = p.FrameDecoder()
        messages = decoder.feed(rest)
        while not messages:
            messages = decoder.feed(control.recv(65536))
        data, rest = upgrade(p.DATA_PATH, f"{p.SESSION_HEADER}: {messages[0].session}")
        with socket.create_connection(("127.0.0.1", relay.port), timeout=5) as visitor:
            visitor.sendall(b"GET / HTTP/1.1\r\nHost: handmade.localhost\r\nConnection: close\r\n\r\n")
            got = rest
            while len(got) < 4:  # the Bind frame: the agent dials its app, then says ready
                got += data.recv(65536)
            data.sendall(p.encode(p.DataReady()))
            while b"\r\n\r\n" not in got[4:]:  # then the request head comes
                got += data.recv(65536)
            data.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            answer = b""
            while chunk := visitor.recv(65536):
                answer += chunk
        assert answer.endswith(b"\r\n\r\nok")
        session = relay.relay.sessions["handmade"]
        assert len(session.parked) == 1
        data.close()
        control.close()


def test_behind_a_proxy_one_keep_alive_connection_moves_between_tunnels_without_closing_any(settings, db):
    """nginx keeps a pool of keep-alive connections to the relay, each carrying any tunnel's
    requests: with ``relay_trust_proxy`` the relay follows every response, so another Host
    parks the idle data connection and takes the other tunnel's, both still joined to their
    keep-alive connections to the apps."""
    settings = settings.replace(relay_trust_proxy=True)
    with HttpUpstream() as other_upstream, tunnel_setup(settings) as t:
        other = make_tunnel(settings, "other", other_upstream.port)
        with ClientThread(t.relay.url, other.token, other_upstream.port) as c2:
            c2.wait_connected()
            app_port = {"myapp": t.upstream.port, "other": other_upstream.port}
            with socket.create_connection(("127.0.0.1", t.relay.port), timeout=10) as sock, \
                    sock.makefile("rb") as f:
                seen = []
                for i, name in enumerate(["myapp", "other"] * 4 + ["myapp"]):
                    sock.sendall(f"GET /{name}/{i} HTTP/1.1\r\nHost: {name}.localhost\r\n"
                                 f"X-Forwarded-For: 203.0.113.{i}\r\n\r\n".encode())
                    status, headers, _ = read_response(f)
                    assert status == 200
                    assert int(headers["x-upstream-port"]) == app_port[name]  # its own tunnel only
                    seen.append((name, int(headers["x-upstream-conn"])))
                # One local connection per tunnel for the whole run: no switch closed anything.
                assert len(set(seen)) == 2, seen
            # The proxy's X-Forwarded-For is trusted and extended, request by request.
            forwarded = {h["X-Forwarded-For"] for _, _, h in t.upstream.seen + other_upstream.seen}
            assert forwarded == {f"203.0.113.{i}, 127.0.0.1" for i in range(9)}


def test_without_a_proxy_a_host_switch_parks_the_idle_data_connection_too(settings, db):
    """The same state machine with or without nginx in front: a switch parks the idle data
    connection, and switching back takes it again."""
    with HttpUpstream() as other_upstream, tunnel_setup(settings) as t:
        other = make_tunnel(settings, "other", other_upstream.port)
        with ClientThread(t.relay.url, other.token, other_upstream.port) as c2:
            c2.wait_connected()
            with socket.create_connection(("127.0.0.1", t.relay.port), timeout=10) as sock, \
                    sock.makefile("rb") as f:
                conns = []
                for name in ("myapp", "other", "myapp"):
                    sock.sendall(f"GET / HTTP/1.1\r\nHost: {name}.localhost\r\n\r\n".encode())
                    status, headers, _ = read_response(f)
                    assert status == 200
                    conns.append(int(headers["x-upstream-conn"]))
                assert conns[0] == conns[2]


def test_behind_a_proxy_the_app_closing_its_connection_leaves_the_proxys_open(settings, db):
    """An app that closes its keep-alive connection after a response: the relay keeps the
    proxy's connection (closing it would race the next request nginx may be sending on it)."""
    settings = settings.replace(relay_trust_proxy=True)
    with tunnel_setup(settings) as t, socket.create_connection(("127.0.0.1", t.relay.port), timeout=10) as sock, \
            sock.makefile("rb") as f:
        sock.sendall(f"GET /closing HTTP/1.1\r\nHost: {t.host}\r\n\r\n".encode())
        status, headers, body = read_response(f)
        assert (status, body) == (200, b"bye\n")
        first = int(headers["x-upstream-conn"])
        wait_for(lambda: all(v.up is None for v in list(t.relay.relay.visitors)), 5,
                 message="the relay let go of the closed data connection")
        sock.sendall(f"GET /after HTTP/1.1\r\nHost: {t.host}\r\n\r\n".encode())
        status, headers, _ = read_response(f)
        assert status == 200 and int(headers["x-upstream-conn"]) != first


class OneAnswerPerConnection:
    """A local app that answers the first request on each connection (keep-alive, as far as
    anyone can tell) and closes the connection when the next request arrives: an app whose
    keep-alive timeout races the relay's reuse, made deterministic."""

    def __init__(self):
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.connections = 0
        self.closed_unanswered = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(conn, self.connections), daemon=True).start()

    def _serve(self, conn, number):
        with conn:
            conn.settimeout(10)
            data = b""
            while b"\r\n\r\n" not in data:
                data += conn.recv(65536) or b"\r\n\r\n"
            body = f"connection {number}".encode()
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
            if conn.recv(65536):  # the next request: dropped with the connection
                self.closed_unanswered += 1

    def close(self):
        self.listener.close()


def test_a_request_on_a_parked_connection_the_app_closes_unanswered_is_sent_again(settings, db):
    app = OneAnswerPerConnection()
    try:
        with tunnel_setup(settings.replace(relay_upstream_keepalive=5.0), upstream=app) as t:
            assert one_request(t.relay.port, t.host)[2] == b"connection 1"
            wait_for(lambda: parked(t) == 1, 5, message="data connection parked")
            # Reused, dropped by the app unanswered, sent again on a fresh data connection.
            assert one_request(t.relay.port, t.host)[2] == b"connection 2"
            assert app.closed_unanswered == 1
            # A request with a body is not sent twice: that visitor gets a clear 502 instead.
            wait_for(lambda: parked(t) == 1, 5, message="data connection parked")
            status, _, body = one_request(t.relay.port, t.host, method="POST",
                                          extra="Connection: close\r\nContent-Length: 2\r\n\r\nhi")
            assert status == 502 and b"closed the connection without answering" in body
            assert app.connections == 2
    finally:
        app.close()


def test_a_visitor_leaving_while_its_reused_connection_is_busy_is_not_sent_again(settings, db, caplog):
    """The retry is for the app dropping a request, not for the visitor going away: nothing
    fails in the relay and the tunnel's count of visitor connections comes back to zero."""
    caplog.set_level(logging.ERROR)
    with tunnel_setup(settings.replace(relay_upstream_keepalive=5.0)) as t:
        local_conn(t)
        wait_for(lambda: parked(t) == 1, 5, message="data connection parked")
        with socket.create_connection(("127.0.0.1", t.relay.port), timeout=5) as s:
            s.sendall(f"GET /slow?delay=0.5 HTTP/1.1\r\nHost: {t.host}\r\nConnection: close\r\n\r\n".encode())
            wait_for(lambda: any(v.up is not None and v.state.resp is Resp.WAITING for v in list(t.relay.relay.visitors)), 5,
                     message="the request on its way to the app")
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # leave with a reset
        local_conn(t)  # another visitor afterwards is served
        session = t.relay.relay.sessions["myapp"]
        wait_for(lambda: session.visitors == 0, 5, message="no visitor left counted")
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
