"""The server URL a user types, completed and parsed (pure: no network)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from urllib.parse import urlsplit


@dataclass(frozen=True)
class ServerAddress:
    scheme: str
    host: str
    port: int

    @property
    def host_header(self) -> str:
        default = 443 if self.scheme == "https" else 80
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == default else f"{host}:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host_header}"

    def other_scheme(self) -> ServerAddress:
        """The same host and port in the other scheme (what a scheme mismatch hint proposes)."""
        return ServerAddress("http" if self.scheme == "https" else "https", self.host, self.port)


def complete_server(url: str) -> tuple[str, str]:
    """The server URL with its scheme, and a note saying which one was chosen when it had none:
    ``http://`` for a loopback host (``localhost``, ``*.localhost``, 127.x, ::1: the embedded
    mode's plain-HTTP relay), ``https://`` for any other (a deployed appliance behind nginx)."""
    if "://" in url:
        return url, ""
    host = urlsplit("//" + url).hostname or ""
    scheme = "http" if _is_loopback(host) else "https"
    why = "a loopback address" if scheme == "http" else "not a loopback address"
    completed = f"{scheme}://{url}"
    return completed, (f"no scheme in {url!r}: using {completed} ({why}); "
                       "write http:// or https:// to choose")


def _is_loopback(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_server(url: str) -> ServerAddress:
    """``https://example.com`` / ``http://localhost:8080`` -> address; ValueError when unusable.
    Without a scheme: see ``complete_server``."""
    parts = urlsplit(complete_server(url)[0])
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"server URL must look like https://example.com, got {url!r}")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise ValueError(f"bad port in server URL {url!r}") from None
    return ServerAddress(parts.scheme, parts.hostname, port)
