"""TCP tunnels with real processes (issue 16): `intunnel relay` and `intunnel tcp` as real processes, a
real sshd reached with a real ssh client, 1 GiB each way byte-exact with flat memory, the reserved
port back after a relay restart before the agent, and a visitor at another relay (PostgreSQL)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from bench.procs import status_kib
from intunnel import accounts, tunnels
from intunnel.models import Route
from tests.support.tunnel import (PATTERN_BLOCK, RelayProcess, _Process, _python_env, free_port, pattern_sha256,
                                  wait_for)
from tests.relay.test_forwarding import secret_file, stack  # noqa: F401 (fixtures)
from tests.relay.test_tcp_tunnels import closed_at_once, connect, free_range, recv_all

GiB = 1 << 30


class TcpClientProcess(_Process):
    """``intunnel tcp PORT --server URL --token TOKEN [extra...]`` as a real process."""

    def __init__(self, server: str, token: str, port: int, *extra: str):
        super().__init__(["tcp", str(port), "--server", server, "--token", token, *extra], _python_env({}))


def tcp_env(ports: str, host: str = "127.0.0.1") -> dict:
    return {"INTUNNEL_RELAY_TCP_PORTS": ports, "INTUNNEL_RELAY_TCP_LISTEN_HOST": host,
            "INTUNNEL_RELAY_TCP_REFRESH": "0.2"}


def tcp_tunnel(settings, ports: str, local_port: int, name: str = "alice"):
    user = accounts.create_user(f"{name}@example.com", name, "correct horse battery")
    return tunnels.create(settings.replace(relay_tcp_ports=ports), user, "ssh", None, local_port, protocol="tcp")


# --- a real sshd ---------------------------------------------------------------------------------

@pytest.fixture
def sshd(tmp_path):
    """sshd on a loopback port, as a process of this test: its own host key, config and user key."""
    binary = shutil.which("sshd") or "/usr/sbin/sshd"
    if not shutil.which("ssh") or not shutil.which(binary):
        pytest.skip("openssh-server and openssh-client are needed")
    privsep = Path("/run/sshd")   # compiled into sshd; what the package's unit makes (RuntimeDirectory)
    if not privsep.is_dir():
        if os.geteuid() != 0:
            pytest.skip("sshd needs /run/sshd (its privilege separation directory)")
        privsep.mkdir(mode=0o755)
    d = tmp_path / "sshd"
    d.mkdir()
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / "host_key")], check=True)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / "user_key")], check=True)
    (d / "authorized_keys").write_text((d / "user_key.pub").read_text())
    port = free_port()
    (d / "sshd_config").write_text(f"""Port {port}
ListenAddress 127.0.0.1
HostKey {d}/host_key
PidFile {d}/sshd.pid
AuthorizedKeysFile {d}/authorized_keys
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
PermitRootLogin prohibit-password
UsePAM no
StrictModes no
""")
    proc = subprocess.Popen([binary, "-D", "-e", "-f", str(d / "sshd_config")], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True)

    def listening():
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    wait_for(listening, 10, message="sshd listening")
    yield port, d / "user_key"
    proc.terminate()
    proc.wait(10)


def test_ssh_through_a_tcp_tunnel(db, settings, stack, sshd):
    ssh_port, key = sshd
    ports = free_range(2)
    tunnel = tcp_tunnel(settings, ports, ssh_port)
    relay = stack.enter_context(RelayProcess(settings, env=tcp_env(ports)))
    client = stack.enter_context(TcpClientProcess(relay.url, tunnel.token, ssh_port))
    client.wait_line(rf"^connected: tcp://localhost:{tunnel.remote_port}")
    marker = secrets.token_hex(8)
    out = subprocess.run(["ssh", "-F", "/dev/null", "-i", str(key), "-p", str(tunnel.remote_port),
                          "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                          "-o", "BatchMode=yes", "-o", "ConnectTimeout=10",
                          "root@127.0.0.1", f"echo {marker}; uname -s"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [marker, "Linux"]


# --- 1 GiB each way ----------------------------------------------------------------------------------

class BulkService:
    """A local service: 'U' + N bytes in -> their SHA-256 hex out; 'D' + 8-byte N -> N pattern bytes out."""

    def __init__(self):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn):
        with conn:
            kind = conn.recv(1)
            if kind == b"U":
                h = hashlib.sha256()
                while True:
                    data = conn.recv(1 << 20)
                    if not data:
                        break
                    h.update(data)
                conn.sendall(h.hexdigest().encode())
            elif kind == b"D":
                n = int.from_bytes(recv_exactly(conn, 8), "big")
                block = memoryview(PATTERN_BLOCK * 16)
                while n:
                    piece = block[:min(n, len(block))]
                    conn.sendall(piece)
                    n -= len(piece)

    def close(self):
        self.sock.close()


def recv_exactly(conn, n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        data = conn.recv(n - len(out))
        if not data:
            raise ConnectionError("closed early")
        out += data
    return bytes(out)


class RssWatch:
    """Samples the processes' RSS every 0.1 s while running: the highest seen, per pid."""

    def __init__(self, pids):
        self.pids = pids
        self.peak = {pid: status_kib(pid, "VmRSS") for pid in pids}
        self.base = dict(self.peak)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self.stop.wait(0.1):
            for pid in self.pids:
                with contextlib.suppress(OSError, KeyError):
                    self.peak[pid] = max(self.peak[pid], status_kib(pid, "VmRSS"))

    def close(self):
        self.stop.set()
        self.thread.join(5)
        return {pid: self.peak[pid] - self.base[pid] for pid in self.pids}


def test_one_gib_each_way_byte_exact_with_flat_memory(db, settings, stack):
    service = BulkService()
    stack.callback(service.close)
    ports = free_range(2)
    tunnel = tcp_tunnel(settings, ports, service.port)
    relay = stack.enter_context(RelayProcess(settings, env=tcp_env(ports)))
    client = stack.enter_context(TcpClientProcess(relay.url, tunnel.token, service.port))
    client.wait_line(r"^connected: tcp://")
    # warm up (imports, pools) before the baseline
    with connect(tunnel.remote_port) as s:
        s.sendall(b"D" + (1 << 20).to_bytes(8, "big"))
        assert len(recv_all(s)) == 1 << 20
    watch = RssWatch([relay.pid, client.pid])
    started = time.monotonic()
    with connect(tunnel.remote_port, timeout=120) as s:            # upload: 1 GiB in, its digest back
        s.sendall(b"U")
        block = memoryview(PATTERN_BLOCK * 16)
        left = GiB
        while left:
            piece = block[:min(left, len(block))]
            s.sendall(piece)
            left -= len(piece)
        s.shutdown(socket.SHUT_WR)                                  # the half-close ends the upload
        assert recv_all(s).decode() == pattern_sha256(GiB)
    up_s = time.monotonic() - started
    started = time.monotonic()
    with connect(tunnel.remote_port, timeout=120) as s:            # download: 1 GiB out
        s.sendall(b"D" + GiB.to_bytes(8, "big"))
        h, total = hashlib.sha256(), 0
        while True:
            data = s.recv(1 << 20)
            if not data:
                break
            h.update(data)
            total += len(data)
        assert total == GiB and h.hexdigest() == pattern_sha256(GiB)
    down_s = time.monotonic() - started
    growth = watch.close()
    print(f"\n1 GiB up {up_s:.1f} s ({GiB / up_s / 1e6:.0f} MB/s), down {down_s:.1f} s "
          f"({GiB / down_s / 1e6:.0f} MB/s); RSS growth KiB: relay {growth[relay.pid]}, client {growth[client.pid]}")
    # flat: a few MiB of slack, nothing near the bytes moved
    assert growth[relay.pid] < 16 * 1024 and growth[client.pid] < 16 * 1024, growth


# --- a relay restart ---------------------------------------------------------------------------------

def test_the_reserved_port_is_back_after_a_relay_restart_before_the_agent(db, settings, stack):
    from tests.relay.test_tcp_tunnels import EchoServer
    echo = EchoServer()
    stack.callback(echo.close)
    ports = free_range(2)
    tunnel = tcp_tunnel(settings, ports, echo.port)
    relay = RelayProcess(settings, env=tcp_env(ports))
    with relay:
        relay.wait_line(rf"TCP port {tunnel.remote_port}: listening")
        # offline (no agent yet): accepted and closed at once, no banner
        assert closed_at_once(tunnel.remote_port)
        relay.stop()
    # the new relay on the same port listens on the reserved port before its agent endpoint
    again = stack.enter_context(RelayProcess(settings, port=relay.port, env=tcp_env(ports)))
    tcp_line = next(i for i, line in enumerate(again.lines) if f"TCP port {tunnel.remote_port}: listening" in line)
    main_line = next(i for i, line in enumerate(again.lines) if "relay listening on" in line)
    assert tcp_line < main_line, again.lines
    assert closed_at_once(tunnel.remote_port)
    client = stack.enter_context(TcpClientProcess(again.url, tunnel.token, echo.port))
    client.wait_line(rf"^connected: tcp://localhost:{tunnel.remote_port}")
    with connect(tunnel.remote_port) as s:
        s.sendall(b"ping")
        s.shutdown(socket.SHUT_WR)
        assert recv_all(s) == b"ping<bye>", (again.lines, client.lines)
    # --upstream HOST:PORT instead of PORT (the same local service, named by address)
    client.stop()
    upstream = stack.enter_context(_Process(["tcp", "--upstream", f"127.0.0.1:{echo.port}", "--server", again.url,
                                             "--token", tunnel.token], _python_env({})))
    upstream.wait_line(rf"^connected: tcp://localhost:{tunnel.remote_port}")
    client = upstream
    with connect(tunnel.remote_port) as s:
        s.sendall(b"up")
        s.shutdown(socket.SHUT_WR)
        assert recv_all(s) == b"up<bye>"
    # ...and it stays reserved across the client's reconnects: stop the relay, start it, same port
    again.stop()
    third = stack.enter_context(RelayProcess(settings, port=relay.port, env=tcp_env(ports)))
    client.wait_line(r"^reconnected: ", timeout=30)
    with connect(tunnel.remote_port) as s:
        s.sendall(b"x")
        s.shutdown(socket.SHUT_WR)
        assert recv_all(s) == b"x<bye>"
    third.stop()


def test_a_port_taken_on_the_host_is_skipped_with_a_log_line(db, settings, stack):
    ports = free_range(2)
    low = int(ports.split("-")[0])
    squatter = socket.create_server(("127.0.0.1", low))
    stack.callback(squatter.close)
    first = tcp_tunnel(settings, ports, 9)                   # gets low: held by the squatter
    second = tunnels.create(settings.replace(relay_tcp_ports=ports), first.owner, "b", None, 9, protocol="tcp")
    relay = stack.enter_context(RelayProcess(settings, env=tcp_env(ports)))
    relay.wait_line(rf"TCP port {first.remote_port} \(tunnel {first.subdomain}\): cannot listen")
    relay.wait_line(rf"TCP port {second.remote_port}: listening")


# --- several relays ------------------------------------------------------------------------------------

def test_a_tcp_visitor_at_the_other_relay_is_forwarded_to_the_one_holding_the_agent(
        db_backend, db, settings, stack, secret_file):
    if db_backend != "postgresql":
        pytest.skip("several relays share a PostgreSQL database")
    from tests.relay.test_tcp_tunnels import EchoServer
    echo = EchoServer()
    stack.callback(echo.close)
    ports = free_range(2)
    tunnel = tcp_tunnel(settings, ports, echo.port)
    relays = []
    for i, host in enumerate(("127.0.0.1", "127.0.0.2")):   # one host: each relay on its own loopback address
        r = stack.enter_context(RelayProcess(settings, env={
            **tcp_env(ports, host), "INTUNNEL_RELAY_ID": f"relay-{i}", "INTUNNEL_RELAY_ROUTE_LEASE": "3",
            "INTUNNEL_RELAY_PEER_LISTEN": f"127.0.0.1:{free_port()}",
            "INTUNNEL_RELAY_PEER_SECRET_FILE": str(secret_file)}))
        r.wait_line(rf"TCP port {tunnel.remote_port}: listening on {host}")
        relays.append(r)
    client = stack.enter_context(TcpClientProcess(relays[0].url, tunnel.token, echo.port))
    client.wait_line(r"connected: tcp://")
    wait_for(lambda: Route.select().where(Route.tunnel == tunnel.id).exists(), 10, message="route")
    holder = Route.get(Route.tunnel == tunnel.id).relay_id
    other = "127.0.0.2" if holder == "relay-0" else "127.0.0.1"
    for host in (other, "127.0.0.1", "127.0.0.2"):   # the forwarded one first, then both
        with socket.create_connection((host, tunnel.remote_port), timeout=10) as s:
            payload = secrets.token_bytes(300_000)
            s.sendall(payload)
            s.shutdown(socket.SHUT_WR)
            assert recv_all(s) == payload + b"<bye>", host
