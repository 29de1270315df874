"""The relay under systemd socket activation (intunnel-relay.socket, relay/activation.py): the
listening socket outlives the relay process, so what connects while one relay stops and the next
starts waits in the backlog and is answered by the new relay, and an agent reconnects at its first
attempt instead of being refused and backing off."""

from __future__ import annotations

import os
import socket
import threading

import pytest

from intunnel.errors import ConfigError
from intunnel.relay.activation import inherited_socket
from tests.support.tunnel import (ClientProcess, HttpUpstream, RelayProcess, _Process, make_tunnel, passing_socket,
                                  relay_env, visit, wait_for)
from tests.relay.test_forwarding import stack  # noqa: F401 (fixture)


@pytest.mark.parametrize("environ", [
    {},                                                       # not socket-activated
    {"LISTEN_FDS": "1", "LISTEN_PID": "1"},                   # passed to another process (a parent)
    {"LISTEN_FDS": "1"},                                      # no pid: not for us either
], ids=["none", "another-pid", "no-pid"])
def test_no_socket_unless_systemd_passed_one_to_this_process(environ):
    before = dict(environ)
    assert inherited_socket(environ) is None
    assert environ == before   # someone else's: left for it


def test_more_than_one_socket_is_a_config_error_and_the_variables_are_consumed():
    environ = {"LISTEN_FDS": "2", "LISTEN_PID": str(os.getpid()), "LISTEN_FDNAMES": "a:b", "OTHER": "x"}
    with pytest.raises(ConfigError, match="passed 2 sockets"):
        inherited_socket(environ)
    assert environ == {"OTHER": "x"}   # as sd_listen_fds(unset_environment=1): no child takes them


def accept_queue(port: int) -> int:
    """Connections the kernel completed on the listening socket at 127.0.0.1:``port`` that no
    process has accepted yet (rx_queue of a LISTEN row of /proc/net/tcp)."""
    local = f"0100007F:{port:04X}"
    for line in open("/proc/net/tcp").read().splitlines()[1:]:
        fields = line.split()
        if fields[1] == local and fields[3] == "0A":
            return int(fields[4].split(":")[1], 16)
    raise AssertionError(f"nothing listens on 127.0.0.1:{port}")


def test_a_restart_keeps_the_port_what_connects_meanwhile_is_answered_by_the_new_relay(db, settings, stack):
    held = socket.create_server(("127.0.0.1", 0), backlog=64)   # what intunnel-relay.socket holds
    stack.callback(held.close)
    port = held.getsockname()[1]
    up = stack.enter_context(HttpUpstream())
    tunnel = make_tunnel(settings, "activated", up.port)
    host = f"activated.{settings.domain}:{port}"
    relay = stack.enter_context(RelayProcess(settings, sock=held))
    assert relay.port == port
    client = stack.enter_context(ClientProcess(relay.url, tunnel.token, up.port, "-v"))
    client.wait_line(r"^connected: ")
    assert visit(port, host)[0] == 200
    assert relay.stop() == 0
    client.wait_line(r"^disconnected: ")
    # No relay runs now.  A visitor connects and asks (the kernel completes the connection: the
    # port is still listening), and the agent's first reconnect attempt connects the same way.
    answers = []
    asked = threading.Thread(target=lambda: answers.append(visit(port, f"{settings.domain}:{port}",
                                                                 "/_intunnel/healthz", timeout=30)))
    asked.start()
    wait_for(lambda: accept_queue(port) >= 2, 15, message="the visitor and the agent waiting in the backlog")
    again = stack.enter_context(RelayProcess(settings, sock=held))
    asked.join(30)
    assert answers and answers[0][0] == 200, answers
    client.wait_line(r"^reconnected: ", timeout=30)
    assert visit(port, host)[0] == 200
    # The agent was never refused: its attempts after the GoAway waited for the new relay (on a
    # loaded machine one may wait out the client's 10 s step timeout and try again; that's a wait).
    after = client.lines[next(i for i, line in enumerate(client.lines) if line.startswith("disconnected: ")):]
    assert not [line for line in after if line.startswith("cannot connect") and "did not answer in time" not in line], \
        client.lines
    again.stop()


def test_a_socket_that_is_not_listening_stops_the_relay_with_one_line(db, settings, stack):
    odd = socket.socket(socket.AF_INET, socket.SOCK_STREAM)   # bound, never listening
    stack.callback(odd.close)
    odd.bind(("127.0.0.1", 0))
    relay = stack.enter_context(_Process(["relay"], relay_env(settings), **passing_socket(odd)))
    assert relay.proc.wait(60) == 2
    relay.close()   # its output read to the end
    out = "\n".join(relay.lines)
    assert "is not a listening TCP socket: intunnel-relay.socket needs ListenStream=HOST:PORT" in out
    assert "Traceback" not in out
