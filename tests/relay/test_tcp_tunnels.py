"""TCP tunnels (issue 16, items 1-4): a real relay and a real client on loopback, real local services.

A TCP tunnel reserves a port of relay_tcp_ports; the relay listens on it and every visitor
there is one data connection of the tunnel's agent, spliced raw to the local service.
"""

from __future__ import annotations

import contextlib
import socket
import socketserver
import threading

import pytest

from intunnel import accounts, tunnels
from intunnel.errors import AppError
from tests.support.tunnel import ClientThread, RelayThread, visit, wait_for


def free_range(count: int) -> str:
    """A range of ``count`` consecutive ports free on loopback right now (at least 1024)."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            start = s.getsockname()[1]
        if start + count > 65535:
            continue
        ok = True
        for port in range(start, start + count):
            with socket.socket() as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)   # as the relay listens (TIME_WAIT ok)
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    ok = False
                    break
        if ok:
            return f"{start}-{start + count - 1}"
    raise AssertionError("no free port range")


class EchoServer(socketserver.ThreadingTCPServer):
    """A local TCP service: echoes every byte; on the visitor's EOF writes b"<bye>" and closes."""
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self):
        class Handler(socketserver.BaseRequestHandler):
            def handle(self):
                while True:
                    data = self.request.recv(65536)
                    if not data:
                        self.request.sendall(b"<bye>")
                        self.request.shutdown(socket.SHUT_WR)
                        return
                    self.request.sendall(data)
        super().__init__(("127.0.0.1", 0), Handler)
        self.port = self.server_address[1]
        threading.Thread(target=self.serve_forever, daemon=True).start()

    def close(self):
        self.shutdown()
        self.server_close()


@pytest.fixture
def echo():
    server = EchoServer()
    yield server
    server.close()


def tcp_settings(settings, ports: str | None = None, **more):
    return settings.replace(relay_tcp_ports=ports if ports is not None else free_range(4),
                            relay_tcp_listen_host="127.0.0.1", relay_tcp_refresh=0.2, **more)


def make_user(name: str = "alice"):
    return accounts.create_user(f"{name}@example.com", name, "correct horse battery")


def connect(port: int, timeout: float = 10.0) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=timeout)


def recv_all(sock: socket.socket) -> bytes:
    out = bytearray()
    while True:
        data = sock.recv(65536)
        if not data:
            return bytes(out)
        out += data


def closed_at_once(port: int) -> bool:
    """The relay accepts and closes at once: EOF (or a reset) within a second, no byte."""
    with connect(port, timeout=5) as s:
        s.settimeout(5)
        try:
            return s.recv(1) == b""
        except ConnectionResetError:
            return True


def test_echo_and_half_close(db, settings, echo):
    settings = tcp_settings(settings)
    user = make_user()
    tunnel = tunnels.create(settings, user, "echo", None, echo.port, protocol="tcp")
    assert tunnel.protocol == "tcp" and tunnel.remote_port == int(settings.relay_tcp_ports.split("-")[0])
    with RelayThread(settings) as relay, ClientThread(relay.url, tunnel.token, echo.port) as client:
        url = client.wait_connected()
        assert url == f"tcp://localhost:{tunnel.remote_port}"
        with connect(tunnel.remote_port) as s:
            s.sendall(b"hello")
            got = b""
            while len(got) < 5:
                got += s.recv(100)
            assert got == b"hello"
            s.shutdown(socket.SHUT_WR)        # the visitor's half-close reaches the service...
            assert recv_all(s) == b"<bye>"    # ...which still answers, then closes its side


def test_a_data_connection_closed_as_the_relay_binds_it_does_not_close_the_visitor(
        db, settings, echo, client_drops_bound_connections):
    """The benchmark's TCP bulk download was closed at once (after its new-connection run, as the
    client's pool shrank): the relay takes another of the agent's data connections instead."""
    settings = tcp_settings(settings)
    tunnel = tunnels.create(settings, make_user(), "echo", None, echo.port, protocol="tcp")
    with RelayThread(settings) as relay, ClientThread(relay.url, tunnel.token, echo.port) as client:
        client.wait_connected()
        client_drops_bound_connections[0] = 1
        assert echoes(tunnel.remote_port)
        assert client_drops_bound_connections[0] == 0


def echoes(port: int, payload: bytes = b"abc", host: str = "127.0.0.1") -> bool:
    with socket.create_connection((host, port), timeout=10) as s:
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)
        try:
            return recv_all(s) == payload + b"<bye>"
        except ConnectionResetError:
            return False


@pytest.mark.parametrize("made, served_as, says", [
    ("http", "tcp", "is an HTTP tunnel's: serve it with `intunnel http`"),
    ("tcp", "http", "is a TCP tunnel's: serve it with `intunnel tcp`"),
])
def test_the_wrong_command_for_the_tunnel_stops_at_once_saying_which(db, settings, echo, made, served_as, says):
    """`intunnel tcp 22` with an HTTP tunnel's token would put SSH behind https://<sub>, and
    `intunnel http` with a TCP tunnel's would read raw TCP as HTTP: neither serves, exit 2."""
    settings = tcp_settings(settings)
    user = make_user()
    tunnel = tunnels.create(settings, user, "mixed", "mixed" if made == "http" else None, echo.port, protocol=made)
    with RelayThread(settings) as relay, ClientThread(relay.url, tunnel.token, echo.port, protocol=served_as) as client:
        assert client.wait_exit() == 2, client.lines
        assert any(says in line for line in client.lines), client.lines
        assert not any(line.startswith("connected:") for line in client.lines), client.lines


def test_every_address_means_ipv4_and_ipv6(db, settings, echo):
    """relay_tcp_listen_host "*": the reserved port on every address of both families (a server's
    IPv6 visitors reach its TCP tunnels as its nginx serves them HTTP on IPv6 too)."""
    settings = tcp_settings(settings).replace(relay_tcp_listen_host="*")
    tunnel = tunnels.create(settings, make_user(), "echo", None, echo.port, protocol="tcp")
    with RelayThread(settings) as relay, ClientThread(relay.url, tunnel.token, echo.port) as client:
        client.wait_connected()
        wait_for(lambda: echoes(tunnel.remote_port), message="the port on IPv4")
        assert echoes(tunnel.remote_port, host="::1"), "the port on IPv6"


@pytest.mark.parametrize("rules, admitted", [
    ({"ip_deny": ["127.0.0.0/8"]}, False),
    ({"ip_allow": ["10.0.0.0/8"]}, False),
    ({"ip_allow": ["127.0.0.1/32"]}, True),
    ({"ip_allow": ["127.0.0.0/8"], "ip_deny": ["127.0.0.1/32"]}, False),
])
def test_ip_rules_refuse_and_allow(db, settings, echo, rules, admitted):
    settings = tcp_settings(settings)
    tunnel = tunnels.create(settings, make_user(), "echo", None, echo.port, protocol="tcp")
    tunnels.set_access(settings, tunnel, rules)
    with RelayThread(settings) as relay, ClientThread(relay.url, tunnel.token, echo.port) as client:
        client.wait_connected()
        if admitted:
            assert echoes(tunnel.remote_port)
        else:
            assert closed_at_once(tunnel.remote_port)   # refused before any data connection is taken
            assert not relay.relay.sessions[tunnel.subdomain].active


def test_a_policy_change_applies_to_the_next_visitor(db, settings, echo):
    settings = tcp_settings(settings)
    tunnel = tunnels.create(settings, make_user(), "echo", None, echo.port, protocol="tcp")
    with RelayThread(settings) as relay, ClientThread(relay.url, tunnel.token, echo.port) as client:
        client.wait_connected()
        assert echoes(tunnel.remote_port)
        tunnels.set_access(settings, tunnel, {"ip_deny": ["127.0.0.1/32"]})
        wait_for(lambda: relay.relay.sessions[tunnel.subdomain].gate.policy is not None, 10,
                 message="the relay took the new policy")
        assert closed_at_once(tunnel.remote_port)


def test_offline_and_local_refused_close_at_once_and_http_never_reaches_it(db, settings, echo):
    settings = tcp_settings(settings)
    tunnel = tunnels.create(settings, make_user(), "echo", None, echo.port, protocol="tcp")
    with RelayThread(settings) as relay:
        assert closed_at_once(tunnel.remote_port)      # no agent: closed, no banner
        dead = socket.socket()
        dead.bind(("127.0.0.1", 0))
        with dead, ClientThread(relay.url, tunnel.token, dead.getsockname()[1]) as client:
            client.wait_connected()
            assert closed_at_once(tunnel.remote_port)  # the local port refuses: closed too
        with ClientThread(relay.url, tunnel.token, echo.port) as client:
            client.wait_connected()
            # an HTTP visitor naming the TCP tunnel's subdomain is not sent to its service
            status, _, _ = visit(relay.port, f"{tunnel.subdomain}.localhost")
            assert status == 404
            assert echoes(tunnel.remote_port)


def test_connection_limit_per_tunnel(db, settings, echo):
    settings = tcp_settings(settings, relay_max_visitors_per_tunnel=2)
    tunnel = tunnels.create(settings, make_user(), "echo", None, echo.port, protocol="tcp")
    with RelayThread(settings) as relay, ClientThread(relay.url, tunnel.token, echo.port) as client:
        client.wait_connected()
        held = [connect(tunnel.remote_port) for _ in range(2)]
        try:
            for s in held:
                s.sendall(b"x")
                assert s.recv(1) == b"x"    # both spliced, each holding a slot
            assert closed_at_once(tunnel.remote_port)
        finally:
            for s in held:
                s.close()
        session = relay.relay.sessions[tunnel.subdomain]
        wait_for(lambda: session.visitors == 0, 10, message="slots released")
        assert echoes(tunnel.remote_port)


def test_deleting_the_tunnel_stops_listening(db, settings, echo):
    settings = tcp_settings(settings)
    tunnel = tunnels.create(settings, make_user(), "echo", None, echo.port, protocol="tcp")
    with RelayThread(settings) as relay:
        wait_for(lambda: tunnel.remote_port in relay.relay.tcp.servers, 10, message="listening")
        tunnels.delete_row(tunnel)
        wait_for(lambda: tunnel.remote_port not in relay.relay.tcp.servers, 10, message="stopped listening")
        with pytest.raises(OSError):
            connect(tunnel.remote_port, timeout=2).close()


def test_a_bulk_transfer_moves_into_the_kernel_a_short_one_never_does(db, settings):
    """A TCP visitor's bytes go through the event loop first (netio.KERNEL_AFTER), so a short
    exchange costs no pump; a bulk one is handed to splice(2) past that, byte-exact."""
    from intunnel.wire import netio, zerocopy
    from tests.relay.test_tcp_processes import BulkService
    from tests.support.tunnel import pattern_sha256
    if not zerocopy.AVAILABLE:
        pytest.skip("splice(2) is Linux only")
    service = BulkService()
    settings = tcp_settings(settings)
    tunnel = tunnels.create(settings, make_user(), "bulk", None, service.port, protocol="tcp")
    try:
        with RelayThread(settings) as relay, ClientThread(relay.url, tunnel.token, service.port) as client:
            client.wait_connected()
            session = relay.relay.sessions[tunnel.subdomain]
            pumped = []

            def download(size: int) -> str:
                import hashlib
                h = hashlib.sha256()
                with connect(tunnel.remote_port) as s:
                    s.sendall(b"D" + size.to_bytes(8, "big"))
                    while True:
                        data = s.recv(1 << 16)
                        if not data:
                            return h.hexdigest()
                        h.update(data)
                        if any(c.pump is not None for c in list(session.active)):
                            pumped.append(True)
            assert download(1000) == pattern_sha256(1000) and not pumped
            size = 64 * netio.KERNEL_AFTER
            assert download(size) == pattern_sha256(size)
            assert pumped, "the kernel never took the bulk transfer over"
    finally:
        service.close()
