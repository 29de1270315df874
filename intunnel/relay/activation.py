"""The relay's listening socket from systemd (socket activation, sd_listen_fds(3)).

intunnel-relay.socket holds the relay's port across restarts: agents and visitors that connect
while one relay process stops and the next starts wait in the socket's backlog and are answered
by the new process, instead of being refused and backing off (an agent's backoff is what made
1,000 agents take 2 s to come back after a restart when the new relay listened after 0.3 s).

The protocol is two environment variables and fd 3; systemd's own Python binding (python-systemd)
needs libsystemd to build, which is more than these few lines are worth.
"""

from __future__ import annotations

import os
import socket

from ..errors import ConfigError

SD_LISTEN_FDS_START = 3   # sd-daemon.h: the first passed descriptor


def inherited_socket(environ=None) -> socket.socket | None:
    """The listening socket systemd passed to this process, or None when it passed none.

    As sd_listen_fds(1) does, the variables are removed so that a child process does not take
    them as its own; a socket unit that passes anything but one listening TCP socket is a
    ConfigError naming what it got.
    """
    environ = os.environ if environ is None else environ
    count, pid = environ.get("LISTEN_FDS"), environ.get("LISTEN_PID")
    if count is None or pid != str(os.getpid()):
        return None   # not ours: systemd names the process it started (a parent's, inherited)
    for name in ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"):
        environ.pop(name, None)
    if count != "1":
        raise ConfigError(f"intunnel-relay.socket passed {count} sockets (LISTEN_FDS); the relay takes exactly "
                          "one: its relay_listen address (one ListenStream= line)")
    try:
        sock = socket.socket(fileno=SD_LISTEN_FDS_START)
    except OSError as e:
        raise ConfigError(f"the socket systemd passed (fd {SD_LISTEN_FDS_START}) is unusable: {e.strerror}") from None
    if sock.type != socket.SOCK_STREAM or sock.family not in (socket.AF_INET, socket.AF_INET6) \
            or not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
        sock.detach()
        raise ConfigError(f"the socket systemd passed (fd {SD_LISTEN_FDS_START}) is not a listening TCP socket: "
                          "intunnel-relay.socket needs ListenStream=HOST:PORT")
    sock.setblocking(False)
    return sock
