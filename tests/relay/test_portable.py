"""INTUNNEL_PORTABLE=1 (intunnel/portable.py) really turns off every Linux-only path, so the
client's second CI pass runs what macOS and Windows run: no uvloop, no splice(2), plain
signal handlers instead of the event loop's."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import pytest

from intunnel import portable
from intunnel.wire import zerocopy
from tests.relay.test_zerocopy import spy_pumps
from tests.support.tunnel import (REPO, ClientProcess, HttpUpstream, RelayThread, make_tunnel, pattern_sha256,
                                  tunnel_setup, visit)

PROBE = """
import asyncio, json, signal
from intunnel import portable
from intunnel.wire import netio, zerocopy

async def probe():
    loop = asyncio.get_running_loop()
    return {"splice": zerocopy.AVAILABLE, "loop": type(loop).__module__,
            "signals": portable.on_signal(loop, signal.SIGTERM, lambda: None)}

print(json.dumps(netio.run(probe())))
"""


def probe(switch: str | None) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in (portable.ENV, "INTUNNEL_EVENT_LOOP")}
    if switch is not None:
        env[portable.ENV] = switch
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=60, check=True)
    return json.loads(out.stdout)


def test_the_switch_turns_off_uvloop_splice_and_the_loops_signal_handlers():
    assert probe("1") == {"splice": False, "loop": "asyncio.unix_events", "signals": "signal"}


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the Linux paths")
def test_without_the_switch_linux_takes_its_own_paths():
    uvloop = pytest.importorskip("uvloop")
    assert probe(None) == probe("0") == {"splice": True, "loop": uvloop.__name__, "signals": "loop"}


@pytest.mark.parametrize("value, forced", [("1", True), ("yes", True), ("0", False), ("", False),
                                           ("false", False)])
def test_what_the_switch_accepts(value, forced):
    assert portable.forced({portable.ENV: value}) is forced
    assert portable.forced({}) is False


@pytest.mark.db_incidental
def test_a_tunnel_in_this_process_uses_splice_exactly_when_not_portable(settings, db, monkeypatch):
    """What this pass of the suite runs: in the portable pass no byte goes through a kernel pump."""
    pumps = spy_pumps(monkeypatch)
    size = 4 * 1024 * 1024 + 7
    with tunnel_setup(settings) as t:
        status, _, body = t.get(f"/download?size={size}", timeout=30)
    assert status == 200 and hashlib.sha256(body).hexdigest() == pattern_sha256(size)
    assert zerocopy.AVAILABLE is (not portable.FORCED and sys.platform.startswith("linux"))
    assert bool(pumps) is zerocopy.AVAILABLE


@pytest.mark.db_incidental
def test_a_portable_client_process_serves_and_stops_on_sigterm_by_the_plain_handler(settings, db):
    with HttpUpstream() as upstream, RelayThread(settings) as relay:
        tunnel = make_tunnel(settings, "myapp", upstream.port)
        with ClientProcess(relay.url, tunnel.token, upstream.port, env={portable.ENV: "1"}) as client:
            client.wait_line(r"^connected: ")
            status, _, body = visit(relay.port, "myapp.localhost", "/download?size=100000", timeout=30)
            assert status == 200 and hashlib.sha256(body).hexdigest() == pattern_sha256(100000)
            assert client.stop() == 0
            client.wait_line(r"^stopped$")
