"""Send a captured request to the local app again, as it was or edited (the inspector's replay).

The replayed exchange is captured like a visitor's (``Capture(store, replay_of=...)``), so it is
listed, marked as a replay.  A request whose body was kept only in part can't be sent "as it
was": that is refused unless an edited body is given.
"""

from __future__ import annotations

import asyncio
import base64
import re
from typing import Optional

from ...wire.netio import wait_for
from . import views
from .capture import Capture, Record, Store

REPLAY_TIMEOUT = 10.0      # seconds a replayed request may take, connect to the response's end
MAX_REPLAY_BODY = 8 << 20  # bytes of an edited body (the API's request bound is a little above)
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
_TARGET = re.compile(r"/[^\x00-\x20\x7f]*\Z")
_VALUE = re.compile(r"[^\r\n\x00]*\Z")
_FRAMING = {"content-length", "transfer-encoding", "connection", "keep-alive", "upgrade"}


class ReplayError(Exception):
    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def build(record: Record, edits: dict) -> bytes:
    """The request to send: ``record``'s, with ``edits`` (method, path, headers, body or
    body_base64) applied; framing headers are the replay's own (Content-Length, Connection: close)."""
    method = edits.get("method") or record.method
    path = edits.get("path") or record.target
    if not isinstance(method, str) or not _TOKEN.match(method):
        raise ReplayError(400, "INVALID_METHOD", "method must be an HTTP token such as POST")
    if not isinstance(path, str) or not _TARGET.match(path):
        raise ReplayError(400, "INVALID_PATH", "path must start with / and hold no spaces or control characters")
    headers = edits.get("headers")
    if headers is None:
        headers = views.summary(record, detail=True)["request"]["headers"]
    elif isinstance(headers, dict):
        headers = [[k, v] for k, v in headers.items()]
    if not isinstance(headers, list) or not all(isinstance(h, list) and len(h) == 2 and
                                                all(isinstance(x, str) for x in h) for h in headers):
        raise ReplayError(400, "INVALID_HEADERS", "headers must be a list of [name, value] pairs or an object")
    for name, value in headers:
        if not _TOKEN.match(name) or not _VALUE.match(value):
            raise ReplayError(400, "INVALID_HEADERS", f"header {name!r} is not a valid name: value")
    if "body_base64" in edits:
        try:
            body = base64.b64decode(edits["body_base64"], validate=True)
        except (ValueError, TypeError):
            raise ReplayError(400, "INVALID_BODY", "body_base64 is not base64") from None
    elif "body" in edits:
        if not isinstance(edits["body"], str):
            raise ReplayError(400, "INVALID_BODY", "body must be a string (or give body_base64)")
        body = edits["body"].encode("utf-8")
    else:
        if record.request.truncated:
            raise ReplayError(409, "BODY_TRUNCATED", "only the first bytes of this request's body were kept: "
                                                     "give the body to send")
        body = views.dechunk(bytes(record.request.kept)) if record.request_chunked else bytes(record.request.kept)
    if len(body) > MAX_REPLAY_BODY:
        raise ReplayError(413, "BODY_TOO_LARGE", f"a replayed body is at most {MAX_REPLAY_BODY} bytes")
    kept = [(k, v) for k, v in headers if k.lower() not in _FRAMING]
    if not any(k.lower() == "host" for k, _ in kept):
        kept.insert(0, ("Host", views.header(record.request_head, "host") or "localhost"))
    if body or method.upper() in ("POST", "PUT", "PATCH"):
        kept.append(("Content-Length", str(len(body))))
    kept.append(("Connection", "close"))
    head = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in kept) + "\r\n"
    return head.encode("latin-1", "replace") + body


async def replay(store: Store, record: Record, edits: dict, host: str, port: int) -> Optional[Record]:
    """Send it to ``host:port`` and capture the exchange; the new record (ReplayError if it
    couldn't be sent)."""
    data = build(record, edits)
    cap = Capture(store, replay_of=record.id, origin=record.origin)
    try:
        reader, writer = await wait_for(asyncio.open_connection(host, port), REPLAY_TIMEOUT)
    except (OSError, asyncio.TimeoutError) as e:
        raise ReplayError(502, "LOCAL_APP_UNREACHABLE", f"the local app on {host}:{port} refused: {e}") from None
    cap.requests(data)
    new = store.records()[0] if store.records() else None
    try:
        writer.write(data)
        await wait_for(_read_all(reader, cap), REPLAY_TIMEOUT)
    except (OSError, asyncio.TimeoutError):
        pass    # what came is recorded; the record says it closed early
    finally:
        cap.closed()
        writer.close()
    return new


async def _read_all(reader: asyncio.StreamReader, cap: Capture) -> None:
    while True:
        chunk = await reader.read(65536)
        if not chunk:
            return
        cap.responses(chunk)
