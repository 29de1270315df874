"""TCP tunnels' public ports, sans I/O: the ``relay_tcp_ports`` range and which port a new tunnel gets.

Rules (each one a row of tests/test_tcpports.py):

- ``relay_tcp_ports`` is a comma-separated list of ports and ranges ``LOW-HIGH`` (inclusive):
  ``"20000-20999"``, ``"20000-20099,21000"``.  Empty (or only blanks): TCP tunnels are off.
- Ports below ``MIN_PORT`` (1024) are never handed out: a range reaching below it is a
  ConfigError naming the setting, not a silent cut.  Nor above 65535, nor ``LOW > HIGH``.
- A requested port (the API's ``remote_port``) must lie in the range and be free; otherwise
  the caller gets the reason (``PortError``: ``field`` and a one-line message).
- Without a request the lowest free port of the range is taken (predictable, and the
  database's UNIQUE index settles two creates racing for it: the loser asks again).
- Nothing free: ``PortError`` saying the range is used up (and how big it is).
"""

from __future__ import annotations

from collections.abc import Collection

from .errors import ConfigError

MIN_PORT = 1024
MAX_PORT = 65535
SETTING = "relay_tcp_ports"


class PortError(ValueError):
    """No port for this request: ``kind`` is "disabled", "invalid", "outside", "taken" or "exhausted"."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind, self.message = kind, message


def parse_ranges(spec: str) -> tuple[tuple[int, int], ...]:
    """The inclusive ``(low, high)`` ranges of ``spec``, sorted and merged; () = TCP off."""
    ranges = []
    for part in (spec or "").split(","):
        part = part.strip()
        if not part:
            continue
        low_text, sep, high_text = part.partition("-")
        low_text, high_text = low_text.strip(), high_text.strip() if sep else low_text.strip()
        if not (low_text.isascii() and low_text.isdigit() and high_text.isascii() and high_text.isdigit()):
            raise ConfigError(f"setting {SETTING!r}: expected ports or ranges like 20000-20999, got {part!r}")
        low, high = int(low_text), int(high_text)
        if low > high:
            raise ConfigError(f"setting {SETTING!r}: {part!r} ends below its start")
        if low < MIN_PORT or high > MAX_PORT:
            raise ConfigError(f"setting {SETTING!r}: {part!r} must lie within {MIN_PORT}-{MAX_PORT} "
                              "(ports below 1024 are never given to tunnels)")
        ranges.append((low, high))
    merged: list[tuple[int, int]] = []
    for low, high in sorted(ranges):
        if merged and low <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], high))
        else:
            merged.append((low, high))
    return tuple(merged)


def size(ranges: tuple[tuple[int, int], ...]) -> int:
    return sum(high - low + 1 for low, high in ranges)


def contains(ranges: tuple[tuple[int, int], ...], port: int) -> bool:
    return any(low <= port <= high for low, high in ranges)


def describe(ranges: tuple[tuple[int, int], ...]) -> str:
    return ",".join(str(low) if low == high else f"{low}-{high}" for low, high in ranges)


def allocate(ranges: tuple[tuple[int, int], ...], taken: Collection[int], requested: object = None) -> int:
    """The port for a new TCP tunnel: ``requested`` if given and allowed, else the lowest free one.
    ``taken``: the ports other tunnels hold (a set: looked up per candidate)."""
    if not ranges:
        raise PortError("disabled", f"TCP tunnels are disabled on this server ({SETTING} is empty)")
    if requested is not None:
        if isinstance(requested, bool) or not isinstance(requested, int):
            raise PortError("invalid", "remote_port must be an integer")
        if not contains(ranges, requested):
            raise PortError("outside", f"remote_port {requested} is outside this server's TCP port range "
                                       f"{describe(ranges)}")
        if requested in taken:
            raise PortError("taken", f"remote_port {requested} is already used by another tunnel")
        return requested
    for low, high in ranges:
        for port in range(low, high + 1):
            if port not in taken:
                return port
    raise PortError("exhausted", f"every port of this server's TCP range {describe(ranges)} is in use "
                                 f"({size(ranges)} ports); delete a TCP tunnel or ask the operator to widen "
                                 f"{SETTING}")
