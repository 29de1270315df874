"""Is the other scheme the right one?  Asked once, when a client never got connected and its
failure is one the wrong scheme explains (a TLS hello sent to a plain-HTTP port, or the reverse)."""

from __future__ import annotations

import asyncio
import socket
import ssl

from ..wire.netio import wait_for
from .address import ServerAddress
from .errors import TokenRefused

PROBE_TIMEOUT = 3.0  # asking the server in the other scheme, when the first session failed

# Failures the scheme does not explain: the port is closed, the name unknown, the certificate
# untrusted (that is TLS), or the relay answered and refused the token (that is the relay).
_NOT_THE_SCHEME = (ConnectionRefusedError, socket.gaierror, ssl.SSLCertVerificationError, TokenRefused)


async def other_scheme_hint(server: ServerAddress, failure: BaseException | None) -> str:
    """What to type instead when the server answers in the other scheme, else ""."""
    if failure is None or isinstance(failure, _NOT_THE_SCHEME):
        return ""
    url = server.other_scheme().url
    # nginx's TLS port answers plain HTTP too (its 400): only a server that fails the TLS
    # handshake now is one that doesn't speak TLS (a first failure may have been transient).
    if server.scheme == "https" and not await answers_tls(server) and await answers_plain_http(server):
        return f"{server.host_header} speaks plain HTTP, not TLS (https): use --server {url}"
    if server.scheme == "http" and await answers_tls(server):
        return f"{server.host_header} speaks TLS (https), not plain HTTP: use --server {url}"
    return ""


async def answers_plain_http(server: ServerAddress) -> bool:
    async def ask() -> bool:
        reader, writer = await asyncio.open_connection(server.host, server.port)
        try:
            writer.write(f"HEAD / HTTP/1.1\r\nHost: {server.host_header}\r\n"
                         "Connection: close\r\n\r\n".encode("latin-1"))
            return await reader.readexactly(5) == b"HTTP/"
        finally:
            writer.close()
    try:
        return await wait_for(ask(), PROBE_TIMEOUT)
    except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError):
        return False


async def answers_tls(server: ServerAddress) -> bool:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # only asking whether it speaks TLS: nothing is sent
    try:
        _, writer = await wait_for(
            asyncio.open_connection(server.host, server.port, ssl=context, server_hostname=server.host),
            PROBE_TIMEOUT)
        writer.close()
        return True
    except (OSError, asyncio.TimeoutError):
        return False
