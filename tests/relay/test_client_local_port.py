"""The dashboard's "Local port" means something (issue 14, item 8): the relay's Welcome carries the
tunnel's stored local port; ``intunnel http`` without PORT forwards there and follows a change at
its next connection; a PORT (or --upstream) given wins and the banner says so."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest

from intunnel import tunnels
from intunnel.wire import protocol as p
from tests.support.loop_server import loop_server
from tests.support.tunnel import (ClientThread, HttpUpstream, RelayProcess, RelayThread, _Process,
                                  _python_env, free_port, make_tunnel, visit, wait_for)

STORED = "the tunnel's local port, set in the dashboard"


def client(relay, tunnel, *argv):
    return _Process(["http", *argv, "--server", relay.url, "--token", tunnel.token], _python_env({}))


def answered_by(upstream: HttpUpstream, relay_port: int, path: str) -> bool:
    status, _, _ = visit(relay_port, "myapp.localhost", path)
    return status == 200 and any(seen[1] == path for seen in upstream.seen)


def test_without_port_the_client_forwards_to_the_tunnels_stored_port(settings, db):
    with HttpUpstream() as app, RelayThread(settings) as relay:
        tunnel = make_tunnel(settings, "myapp", local_port=app.port)
        with client(relay, tunnel) as proc:
            proc.wait_line(r"^connected: http://myapp\.localhost")
            proc.wait_line(rf"^forwarding to 127\.0\.0\.1:{app.port} \({STORED}\)$")
            assert answered_by(app, relay.port, "/through-the-stored-port")
            assert not any("Traceback" in line for line in proc.lines), proc.lines


def test_a_port_given_wins_and_the_banner_says_the_dashboards_is_overridden(settings, db):
    with HttpUpstream() as app, HttpUpstream() as other, RelayThread(settings) as relay:
        tunnel = make_tunnel(settings, "myapp", local_port=other.port)
        with client(relay, tunnel, str(app.port)) as proc:
            proc.wait_line(rf"^connected: http://myapp\.localhost:\d+ -> http://127\.0\.0\.1:{app.port}$")
            proc.wait_line(rf"^forwarding to 127\.0\.0\.1:{app.port} \(PORT given: the dashboard's local "
                           rf"port {other.port} is overridden\)$")
            assert answered_by(app, relay.port, "/to-the-given-port")
            assert not other.seen


def test_a_port_given_equal_to_the_stored_one_says_nothing_more(settings, db):
    with HttpUpstream() as app, RelayThread(settings) as relay:
        tunnel = make_tunnel(settings, "myapp", local_port=app.port)
        with ClientThread(relay.url, tunnel.token, app.port) as c:
            c.wait_connected()
            assert answered_by(app, relay.port, "/same")
            assert not any(line.startswith("forwarding to") for line in c.lines), c.lines


def test_upstream_needs_no_port(settings, db):
    with HttpUpstream() as app, RelayThread(settings) as relay:
        tunnel = make_tunnel(settings, "myapp", local_port=free_port())
        with client(relay, tunnel, "--upstream", f"localhost:{app.port}") as proc:
            proc.wait_line(rf"^connected: .* -> http://localhost:{app.port}$")
            proc.wait_line(rf"^forwarding to localhost:{app.port} \(--upstream given: the dashboard's local "
                           rf"port {tunnel.local_port} is overridden\)$")
            assert answered_by(app, relay.port, "/upstream")


def test_a_reconnect_follows_a_local_port_changed_in_the_dashboard(settings, db):
    with HttpUpstream() as first, HttpUpstream() as second:
        tunnel = make_tunnel(settings, "myapp", local_port=first.port)
        port = free_port()
        relay = RelayProcess(settings, port)
        c = ClientThread(relay.url, tunnel.token, None)
        try:
            c.wait_connected()
            assert answered_by(first, port, "/before")
            # What the dashboard's form and PATCH /api/tunnels/:id do.
            tunnels.update(tunnel.owner, tunnel.id, {"local_port": second.port})
            assert relay.stop() == 0
            relay = RelayProcess(settings, port)
            c.wait_connected(count=2, timeout=20)
            wait_for(lambda: answered_by(second, port, "/after"), 10, message="the new port serves")
            assert not any(seen[1] == "/after" for seen in first.seen)
            assert f"forwarding to 127.0.0.1:{second.port} ({STORED}; it was {first.port})" in c.lines, c.lines
        finally:
            c.stop()
            relay.close()


def test_host_header_rewrite_without_port_names_the_stored_port(settings, db):
    """The Hello's rewritten Host header names the port, which the client learns from the first
    Welcome: a second session naming it replaces the first at once (one "connected" line)."""
    with HttpUpstream() as app, RelayThread(settings) as relay:
        tunnel = make_tunnel(settings, "myapp", local_port=app.port)
        with ClientThread(relay.url, tunnel.token, None, host_header="rewrite") as c:
            c.wait_connected()
            assert answered_by(app, relay.port, "/rewritten")
            host = next(headers for method, path, headers in app.seen if path == "/rewritten")["Host"]
            assert host == f"127.0.0.1:{app.port}"
            assert sum(1 for line in c.lines if line.startswith(("connected:", "reconnected:"))) == 1, c.lines
            assert not any(line.startswith(("disconnected", "intunnel:")) for line in c.lines), c.lines


@pytest.fixture
def old_relay():
    """A relay of the version before Welcome.local_port: its Welcome has no such field."""
    async def serve(reader, writer):
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: intunnel\r\nConnection: Upgrade\r\n\r\n")
            decoder = p.FrameDecoder()
            while not decoder.feed(data := await reader.read(4096)):
                if not data:
                    return   # the client left before its Hello
            body = (b'{"type":"welcome","url":"http://old.localhost","subdomain":"old","session":"s",'
                    b'"heartbeat_interval":10,"dead_peer_timeout":30,"pool_size":0,"access":""}')
            writer.write(len(body).to_bytes(4, "big") + body)
            await reader.read()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    with loop_server(serve, "old-relay") as port:
        yield port


def test_no_port_against_a_relay_that_does_not_say_it_exits_2(old_relay):
    done = subprocess.run([sys.executable, "-m", "intunnel.cli", "http", "--server",
                           f"http://127.0.0.1:{old_relay}", "--token", "t"], env=_python_env({}),
                          capture_output=True, text=True, timeout=30)
    out = done.stdout + done.stderr
    assert done.returncode == 2, out
    assert "did not say the tunnel's local port" in out and "intunnel http 3000" in out
    assert "connected:" not in out and "Traceback" not in out


def test_a_port_given_serves_against_an_older_relay(old_relay):
    with ClientThread(f"http://127.0.0.1:{old_relay}", "t", 3000) as c:
        c.wait_connected()
        assert not any(line.startswith("forwarding to") for line in c.lines), c.lines


@pytest.mark.parametrize("argv, message", [
    (["http", "0"], "PORT must be between 1 and 65535"),
    (["http", "70000"], "PORT must be between 1 and 65535"),
    (["http", "--upstream", "nope"], "--upstream must be HOST:PORT"),
    (["http", "--upstream", "host:0"], "--upstream must be HOST:PORT"),
])
def test_bad_ports_are_one_line_and_exit_2(argv, message):
    done = subprocess.run([sys.executable, "-m", "intunnel.cli", *argv, "--server", "http://127.0.0.1:9",
                           "--token", "t"], env=_python_env({}), capture_output=True, text=True, timeout=30)
    assert done.returncode == 2 and done.stderr.strip() == f"intunnel: {message}", done.stderr
