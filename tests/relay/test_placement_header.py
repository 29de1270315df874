"""The client names its tunnel in ``X-InTunnel-Tunnel`` so that nginx, balancing several relays,
sends it where the tunnel's visitors go (issue 12).

A recording TCP hop between the real client and the real relay keeps the request head of
every connection the client opens: the first session (no Welcome yet) names nothing on any
of its connections, every later session names the subdomain of the last Welcome on its
control channel and on each of its data connections, and the relay serves either way.
"""

from __future__ import annotations

import contextlib
import socket
import threading

from intunnel.wire.protocol import AGENT_PATH, DATA_PATH, PLACEMENT_HEADER, SESSION_HEADER
from tests.support.tunnel import ClientThread, HttpUpstream, RelayThread, make_tunnel, visit, wait_for


class RecordingHop:
    """127.0.0.1 port 0 -> ``target``, bytes both ways untouched; ``heads`` holds each connection's
    request head, in order; ``cut()`` closes every connection open now."""

    def __init__(self, target: int):
        self.target = target
        self.heads: list[str] = []
        self._open: list[socket.socket] = []
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            relay = socket.create_connection(("127.0.0.1", self.target))
            with self._lock:
                self._open += [client, relay]
            threading.Thread(target=self._pipe, args=(client, relay, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(relay, client, False), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, record: bool):
        head = b""
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                if record and b"\r\n\r\n" not in head:
                    head += data
                    if b"\r\n\r\n" in head:
                        with self._lock:
                            self.heads.append(head.split(b"\r\n\r\n")[0].decode("latin-1"))
                dst.sendall(data)
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def cut(self):
        with self._lock:
            conns, self._open = self._open, []
        for s in conns:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def close(self):
        self._listener.close()
        self.cut()


def header(head: str, wanted: str) -> str | None:
    for line in head.split("\r\n")[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == wanted.lower():
            return value.strip()
    return None


def sessions(heads: list[str]) -> list[tuple[str | None, list[str | None]]]:
    """Per session, in order: what its control channel named, and what each of its data
    connections named (grouped by the session secret they carry)."""
    controls = [header(h, PLACEMENT_HEADER) for h in heads if h.split(" ")[1] == AGENT_PATH]
    data: dict[str, list[str | None]] = {}
    for h in heads:
        if h.split(" ")[1] == DATA_PATH:
            data.setdefault(header(h, SESSION_HEADER), []).append(header(h, PLACEMENT_HEADER))
    return list(zip(controls, data.values()))


def test_each_session_names_the_last_welcomed_tunnel_on_all_its_connections(settings, db):
    with HttpUpstream() as upstream, RelayThread(settings) as relay:
        tunnel = make_tunnel(settings, "myapp", upstream.port)
        hop = RecordingHop(relay.port)
        try:
            with ClientThread(f"http://localhost:{hop.port}", tunnel.token, upstream.port) as client:
                client.wait_connected()
                assert visit(relay.port, "myapp.localhost", "/one")[0] == 200  # the relay ignores it
                wait_for(lambda: len(sessions(hop.heads)) == 1, 5, message="the first session's data connections")
                hop.cut()  # the relay "went away": the client reconnects, now knowing its tunnel
                client.wait_connected(count=2)
                assert visit(relay.port, "myapp.localhost", "/two")[0] == 200
                seen = wait_for(lambda: len(s := sessions(hop.heads)) == 2 and s, 5,
                                message="the second session's data connections")
        finally:
            hop.close()
    (control1, data1), (control2, data2) = seen
    assert control1 is None and set(data1) == {None}, seen  # no Welcome yet: nothing to name
    assert control2 == "myapp" and set(data2) == {"myapp"}, seen
