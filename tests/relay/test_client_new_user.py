"""What a new user trips over with the client (issue 14): the wrong scheme, the web app's port,
several saved tokens, the dashboard's local port, signals without add_signal_handler, quiet retries."""

from __future__ import annotations

import asyncio
import json
import signal
import ssl
import subprocess
import sys
import time

import pytest

from intunnel.client import agent as agent_mod
from intunnel.client import cli as client_cli
from intunnel.client.agent import parse_server
from tests.support.loop_server import loop_server
from tests.support.tunnel import (ClientThread, HttpUpstream, RelayThread, _Process, _python_env, free_port,
                                  make_tunnel, visit, wait_for)


def run_client(*argv, env=None, timeout=30):
    return subprocess.run([sys.executable, "-m", "intunnel.cli", *argv], env=_python_env(env or {}),
                          capture_output=True, text=True, timeout=timeout)


# --- 1. the scheme -----------------------------------------------------------------------------

@pytest.mark.parametrize("given, url", [
    ("localhost:8080", "http://localhost:8080"),
    ("127.0.0.1:8080", "http://127.0.0.1:8080"),
    ("myapp.localhost", "http://myapp.localhost"),
    ("[::1]:8080", "http://[::1]:8080"),
    ("example.com", "https://example.com"),
    ("http://example.com", "http://example.com"),
    ("https://localhost:8443", "https://localhost:8443"),
])
def test_a_server_without_scheme_is_http_on_loopback_else_https(given, url):
    from intunnel.client.agent import complete_server
    completed, note = complete_server(given)
    assert completed == url
    assert (note != "") == ("://" not in given)
    assert parse_server(given).scheme == url.split(":", 1)[0]


def test_https_against_the_plain_http_relay_says_what_to_type_and_exits_2(settings, db):
    with RelayThread(settings) as relay:
        started = time.monotonic()
        done = run_client("http", "3000", "--server", f"https://localhost:{relay.port}", "--token", "t")
        assert done.returncode == 2, done.stdout + done.stderr
        out = done.stdout + done.stderr
        assert f"--server http://localhost:{relay.port}" in out
        assert "plain HTTP" in out and "Traceback" not in out
        assert time.monotonic() - started < 8


def test_no_scheme_on_loopback_says_it_chose_http(settings, db):
    with HttpUpstream() as up, RelayThread(settings) as relay:
        tunnel = make_tunnel(settings, "myapp", up.port)
        client = _Process(["http", str(up.port), "--server", f"localhost:{relay.port}", "--token", tunnel.token],
                          _python_env({}))
        try:
            client.wait_line(r"^connected: http://myapp\.localhost")
            assert any(f"using http://localhost:{relay.port}" in line for line in client.lines), client.lines
        finally:
            client.close()


@pytest.fixture
def tls_server(tmp_path):
    """A TLS server (self-signed) on loopback that answers anything with a 404."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
                    "/CN=localhost", "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)

    async def answer(reader, writer):
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            await writer.drain()
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()

    with loop_server(answer, "tls-server", ssl=ctx) as port:
        yield port


def test_http_against_a_tls_port_says_what_to_type_and_exits_2(tls_server):
    done = run_client("http", "3000", "--server", f"http://localhost:{tls_server}", "--token", "t")
    out = done.stdout + done.stderr
    assert done.returncode == 2, out
    assert f"--server https://localhost:{tls_server}" in out and "TLS" in out
    assert "Traceback" not in out


# --- 2. the web app's port ----------------------------------------------------------------------

def test_the_web_apps_port_names_the_relay_and_exits_2(settings):
    from tests.support.web_server import running_web_app
    with running_web_app(settings) as web:
        done = run_client("http", "3000", "--server", f"http://localhost:{web.port}", "--token", "t")
    out = done.stdout + done.stderr
    assert done.returncode == 2, out
    assert "that is the InTunnel web app" in out
    assert f"the relay is at {settings.relay_url}" in out and "Traceback" not in out


# --- 10. one "disconnected" line ----------------------------------------------------------------

def test_one_disconnected_line_while_the_relay_stays_away(settings, db):
    with HttpUpstream() as up:
        tunnel = make_tunnel(settings, "myapp", up.port)
        relay = RelayThread(settings)
        lines: list[str] = []
        client = ClientThread(relay.url, tunnel.token, up.port)
        client.agent.say = lines.append
        try:
            wait_for(lambda: any(l.startswith("connected:") for l in lines), 10, message="connected")
            relay.stop()
            # Retries happen (0.4 s, 0.8 s, 1.6 s...): wait for three failed attempts.
            attempts = []
            real = client.agent._open_session

            async def counting():
                attempts.append(time.monotonic())
                return await real()
            client.agent._open_session = counting
            wait_for(lambda: len(attempts) >= 3, 15, message="three retries")
            assert sum(1 for l in lines if l.startswith("disconnected:")) == 1, lines
            assert not any(l.startswith("cannot connect") for l in lines), lines
        finally:
            client.stop()
            relay.stop()


def test_a_plain_stop_is_not_called_a_restart(settings, db):
    with HttpUpstream() as up:
        tunnel = make_tunnel(settings, "myapp", up.port)
        relay = RelayThread(settings)
        try:
            with ClientThread(relay.url, tunnel.token, up.port) as client:
                client.wait_connected()
                relay.stop()
                wait_for(lambda: any(l.startswith("disconnected:") for l in client.lines), 10, message="disconnected")
                line = next(l for l in client.lines if l.startswith("disconnected:"))
                assert "restarting" not in line and "stopping" in line, line
        finally:
            relay.stop()
