"""The inspector API's JSON shapes of a captured exchange (pure), in the spirit of ngrok's agent API."""

from __future__ import annotations

import base64
import datetime
import re
from typing import Optional

from .capture import Body, Record

_CHUNK_LINE = re.compile(rb"([0-9A-Fa-f]{1,16})[^\r\n]*\r\n")


def dechunk(kept: bytes) -> bytes:
    """The data of a chunked body's first bytes (it may stop in the middle of a chunk)."""
    out, pos = bytearray(), 0
    while pos < len(kept):
        m = _CHUNK_LINE.match(kept, pos)
        if m is None:
            break
        size = int(m.group(1), 16)
        if size == 0:
            break
        start = m.end()
        out += kept[start:start + size]
        pos = start + size + 2
    return bytes(out)


def _headers(head: str) -> list:
    lines = head.split("\r\n")[1:]
    pairs = []
    for line in lines:
        name, _, value = line.partition(":")
        if name:
            pairs.append([name, value.strip(" \t")])
    return pairs


def header(head: str, name: str) -> str:
    name = name.lower()
    for k, v in _headers(head):
        if k.lower() == name:
            return v
    return ""


def _body(body: Body, chunked: bool, head: str, with_data: bool) -> dict:
    out = {"size": body.size, "kept": len(body.kept), "truncated": body.truncated,
           "content_type": header(head, "content-type")}
    if with_data:
        data = dechunk(bytes(body.kept)) if chunked else bytes(body.kept)
        out["data"] = base64.b64encode(data).decode("ascii")
    return out


def _iso(t: float) -> str:
    return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).isoformat(timespec="milliseconds")


def summary(record: Record, detail: bool = False) -> dict:
    """One exchange; ``detail`` adds both heads and the kept body bytes (base64)."""
    out = {
        "id": record.id,
        "uri": f"/api/requests/http/{record.id}",
        "start": _iso(record.started),
        "duration_ms": None if record.duration is None else round(record.duration * 1000, 3),
        "remote_addr": record.remote,
        "state": record.state,
        "replay": bool(record.replay_of),
        "replay_of": record.replay_of or None,
        "public_url": getattr(record.origin, "url", None),   # the tunnel it came through
        "request": {"method": record.method, "uri": record.target,
                    "host": header(record.request_head, "host"),
                    "body": _body(record.request, record.request_chunked, record.request_head, detail)},
        "response": None,
    }
    if record.status:
        out["response"] = {"status_code": record.status, "interim": list(record.interim),
                           "body": _body(record.response, record.response_chunked, record.response_head, detail)}
    if record.upgraded:
        out["upgrade"] = {"protocol": header(record.request_head, "upgrade"), "bytes_in": record.raw_up,
                          "bytes_out": record.raw_down, "open": record.state == "upgraded"}
    if detail:
        out["request"]["head"] = record.request_head
        out["request"]["headers"] = _headers(record.request_head)
        if out["response"] is not None:
            out["response"]["head"] = record.response_head
            out["response"]["headers"] = _headers(record.response_head)
    return out


def matches(record: Record, path: Optional[str], method: Optional[str], status: Optional[str]) -> bool:
    """The list's filters: ``path`` a substring of the target, ``method`` exact (any case),
    ``status`` a code ("404") or a class ("4xx")."""
    if path and path not in record.target:
        return False
    if method and record.method != method.upper():
        return False
    if status:
        code = str(record.status) if record.status else ""
        if len(status) == 3 and status.endswith("xx"):
            return code[:1] == status[0]
        return code == status
    return True
