"""Differential fuzzing of the relay's message reader against h11 and httptools (llhttp).

The same bytes (request streams, and response streams with the requests they answer)
go to ``http1.MessageReader``, to h11 and to httptools: realistic messages from a small
grammar, then byte-level mutations (CRLF to LF or CR, a line twice, a space before a
colon or at a line's start, chunk sizes and Content-Length values edited, a byte
replaced, inserted or removed).  ``tests/support/framing.py`` reduces each reader's view
to where every head and message ends.  The properties, for every message the relay's
reader accepts:

* a reference that accepts it too frames it the same way (same head end, same end,
  so the next message starts at the same byte), and one that is still inside it at the
  end of the bytes disagrees;
* it is not more lenient than both: when every reference that reads that far rejects
  the message, so must the relay's reader;
* after an upgrade (a request) or a 101 (a response) it switches at the same byte as a
  reference that switches there; and it is never waiting for more of a message that a
  reference has already finished;
* feeding the bytes in random pieces changes nothing.

Rejecting what a reference accepts is fine (stricter).  The known differences, each
turned into an abstention below (``KNOWN``) with its reason:

* h11 implements only ``Transfer-Encoding: chunked``; the reader takes codings before
  a final ``chunked`` (RFC 9112 §6.1; llhttp does too), and reads a response with other
  codings until the app closes.
* llhttp knows a fixed list of methods; any token is a method (RFC 9110 §9.1).
* Whitespace before a chunk extension's ";" (``5 ;x``) is BWS in RFC 9112 §7.1.1's
  grammar; both references reject it.
* A chunk extension's text after its ";" is not parsed (visible ASCII, space and tab; h11
  takes anything there); llhttp checks its grammar (names, quoted strings).  The chunk
  line ends at its CRLF either way.
* A control character other than CR, LF and NUL in a field value is kept (RFC 9110 §5.5
  calls it invalid but lets a recipient keep it; h11 does); llhttp rejects it.  In a
  framing header it never reads as a length or as "chunked": such a Content-Length is
  refused, a request with such a Transfer-Encoding too (501), a response with one is read
  until the app closes.
* httptools skips the content of a request llhttp takes as an upgrade (its
  on_headers_complete returns 1 then), and takes HTTP/1.0 upgrades.  The reader reads
  that content as the request's (as h11 does) and ignores an HTTP/1.0 Upgrade
  (RFC 9110 §7.8 MUST), so httptools abstains from such a request on.
* Where the references stop reading, they abstain: after ``Connection: close`` or an
  HTTP/1.0 message (both), after ``Upgrade`` without ``Connection: upgrade`` (h11 pauses
  there; the reader and llhttp read on, RFC 9110 §7.8), after a read-until-close body
  (llhttp has no end-of-stream call through httptools); httptools for responses to HEAD
  is helped by cutting the stream at the head's end (MagicStack/httptools#47).
* A request's Content-Length repeated with the same value is used (RFC 9112 §6.3 allows
  it; h11 does too); llhttp refuses any repeat.  (A response's is refused: stricter.)
* A request-target is any run of visible bytes (bytes over 0x7f included, as nginx takes
  them) passed on as it is: the app's own parser judges it.  llhttp checks URL syntax,
  h11 refuses bytes over 0x7f.  The target plays no part in framing.
* CR and LF bytes before a request line are skipped (RFC 9112 §2.2: empty lines SHOULD be
  ignored; llhttp and nginx skip any CR or LF there); h11 refuses even one empty line.

Other differences are strictness only and need no exception: the reader also refuses a
repeated identical Content-Length in a response (h11 accepts it), ``Content-Length: 5, 5``,
bare LF line ends and obs-fold (h11 accepts both), TE together with Content-Length (h11
takes the chunked framing), a 101 nobody asked for, chunk sizes over 16 hex digits.
"""

from __future__ import annotations

import os
import re

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.support.framing import Message, read_h11, read_httptools, read_mr

# --- a grammar of realistic messages -------------------------------------------------------------
NAMES = ["Accept", "User-Agent", "X-Trace", "Cookie", "Cache-Control"]
VALUES = ["*/*", "curl/8.5", "a=1; b=2", "", "no-cache", "x" * 40]


def _head(first: str, headers) -> str:
    return first + "\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers) + "\r\n"


@st.composite
def _chunked(draw) -> str:
    out = []
    for n in draw(st.lists(st.integers(1, 24), max_size=3)):
        size = format(n, draw(st.sampled_from(["x", "X", "03x"])))
        ext = draw(st.sampled_from(["", "", ";a", ";a=b", ';q="x y"']))
        out.append(f"{size}{ext}\r\n" + "d" * n + "\r\n")
    trailer = draw(st.sampled_from(["", "", "Trailer-A: 1\r\n", "A: 1\r\nB: 2\r\n"]))
    return "".join(out) + "0\r\n" + trailer + "\r\n"


@st.composite
def _body(draw, headers: list, until_close: bool) -> str:
    kind = draw(st.sampled_from(["none", "length", "length", "chunked", "chunked"] + ["close"] * until_close))
    if kind == "length":
        n = draw(st.integers(0, 30))
        headers.append(("Content-Length", str(n)))
        return "b" * n
    if kind == "chunked":
        headers.append(("Transfer-Encoding", draw(st.sampled_from(["chunked", "chunked", "Chunked", "gzip, chunked"]))))
        return draw(_chunked())
    return ""


def _common(draw, connections) -> list:
    headers = draw(st.lists(st.tuples(st.sampled_from(NAMES), st.sampled_from(VALUES)), max_size=3))
    conn = draw(st.sampled_from([None, None, None, *connections]))
    if conn:
        headers.append(("Connection", conn))
    return headers


@st.composite
def request(draw) -> bytes:
    method = draw(st.sampled_from(["GET", "GET", "POST", "PUT", "HEAD", "DELETE", "OPTIONS"]))
    version = draw(st.sampled_from(["HTTP/1.1"] * 6 + ["HTTP/1.0"]))
    headers = [("Host", draw(st.sampled_from(["a.example", "a.example:8080", "b.example"])))]
    headers += _common(draw, ["keep-alive", "close", "Upgrade", "keep-alive, Upgrade"])
    if "Upgrade" in (headers[-1][1] if headers[-1][0] == "Connection" else "") or draw(st.integers(0, 5)) == 0:
        headers.append(("Upgrade", "websocket"))
    body = draw(_body(headers, until_close=False))
    draw(st.randoms()).shuffle(headers)
    stray = draw(st.sampled_from([""] * 8 + ["\r\n"]))
    return (stray + _head(f"{method} /p?q=1 {version}", headers) + body).encode("latin-1")


@st.composite
def response(draw, method: str) -> tuple[bytes, int]:
    status = draw(st.sampled_from([200, 200, 201, 204, 304, 404, 500, 100, 103, 101]))
    version = draw(st.sampled_from(["HTTP/1.1"] * 6 + ["HTTP/1.0"]))
    reason = draw(st.sampled_from([" OK", "", " Some Reason", " "]))
    headers = _common(draw, ["keep-alive", "close", "Upgrade"])
    if status == 101:
        headers.append(("Upgrade", "websocket"))
    body = draw(_body(headers, until_close=True)) if status >= 200 else ""
    if (method == "HEAD" or status in (204, 304)) and draw(st.booleans()):
        body = ""   # else a body where none belongs: it is read as the next response
    draw(st.randoms()).shuffle(headers)
    return (_head(f"{version} {status}{reason}", headers) + body).encode("latin-1"), status


@st.composite
def responses(draw) -> tuple[tuple, bytes]:
    asked, data = [], b""
    for _ in range(draw(st.integers(1, 3))):
        method = draw(st.sampled_from(["GET", "GET", "POST", "HEAD"]))
        asked.append((method, draw(st.integers(0, 4)) == 0))
        while True:   # interim responses first, then the final one (or a 101)
            raw, status = draw(response(method))
            data += raw
            if status >= 200 or status == 101:
                break
    return tuple(asked), data


# --- byte-level mutations ------------------------------------------------------------------------
ALPHABET = [b" ", b"\t", b"\r", b"\n", b":", b";", b"0", b"a", b"F", b"\x00", b",", b"\x7f", b"\xff", b"-"]
_CHUNK_SIZE = re.compile(rb"(?<=\n)[0-9a-fA-F]+(?=[;\r ])")
_CL_VALUE = re.compile(rb"(?i)content-length: ?([0-9]+)")


def _crlf(data: bytes, k: int) -> int:
    spots = [m.start() for m in re.finditer(rb"\r\n", data)]
    return spots[k % len(spots)] if spots else -1


def mutate(data: bytes, mutations) -> bytes:
    for kind, k, b in mutations:
        if not data:
            break
        i = _crlf(data, k)
        if kind in ("lf", "cr", "crcr", "dup") and i < 0:
            continue
        if kind == "lf":
            data = data[:i] + data[i + 1:]
        elif kind == "cr":
            data = data[:i + 1] + data[i + 2:]
        elif kind == "crcr":
            data = data[:i] + b"\r" + data[i:]
        elif kind == "dup":      # the line ending there, twice
            start = data.rfind(b"\n", 0, i) + 1
            data = data[:i + 2] + data[start:i + 2] + data[i + 2:]
        elif kind == "space":    # before a colon, or at a line's start (obs-fold)
            spots = [m.start() for m in re.finditer(rb":|(?<=\n)", data)]
            j = spots[k % len(spots)]
            data = data[:j] + (b"\t" if b == b"\t" else b" ") + data[j:]
        elif kind == "chunk" and (sizes := list(_CHUNK_SIZE.finditer(data))):
            m = sizes[k % len(sizes)]
            s, n = m.group().decode(), int(m.group(), 16)
            new = [format(n + 1, "x"), format(max(n - 1, 0), "x"), s + " x", "0" + s, s + " ",
                   "0x" + s, s + " ;e", "-" + s][k % 8]
            data = data[:m.start()] + new.encode() + data[m.end():]
        elif kind == "cl" and (lengths := list(_CL_VALUE.finditer(data))):
            m = lengths[k % len(lengths)]
            n = int(m.group(1))
            new = [str(n + 1), str(max(n - 1, 0)), f"{n}, {n}", f"+{n}", f"{n} {n}", f"0{n}", f"{n}x"][k % 7]
            data = data[:m.start(1)] + new.encode() + data[m.end(1):]
        elif kind == "byte":
            j = k % len(data)
            data = data[:j] + b + data[j + 1:]
        elif kind == "insert":
            j = k % (len(data) + 1)
            data = data[:j] + b + data[j:]
        elif kind == "delete":
            j = k % len(data)
            data = data[:j] + data[j + 1:]
    return data


MUTATIONS = st.lists(st.tuples(st.sampled_from(["lf", "cr", "crcr", "dup", "space", "chunk", "cl",
                                                "byte", "insert", "delete"]),
                               st.integers(0, 10 ** 6), st.sampled_from(ALPHABET)), max_size=3)

# --- the comparison ------------------------------------------------------------------------------
_BWS_CHUNK_EXT = re.compile(rb"\n[0-9A-Fa-f]+[ \t]+;")
_HIGH_BIT_TARGET = re.compile(rb"[\r\n]*[A-Z]+ [^ \r\n]*[\x80-\xff]")
_CTL_IN_VALUE = re.compile(rb"\n[^:\r\n]*:[^\r\n]*[\x01-\x08\x0b\x0c\x0e-\x1f\x7f]")
# (reader, what its error says, does the message's bytes show the documented case)
KNOWN = [
    ("h11", "Only Transfer-Encoding: chunked is supported", lambda seg: True),
    ("httptools", " method", lambda seg: True),   # "Invalid method encountered", "Expected space after method"
    ("h11", "illegal chunk header", _BWS_CHUNK_EXT.search),
    ("httptools", "Invalid character in chunk size", _BWS_CHUNK_EXT.search),
    ("httptools", "in chunk extensions", lambda seg: True),
    ("httptools", "Invalid header value char", _CTL_IN_VALUE.search),
    ("h11", "no request line received", lambda seg: seg[:1] in b"\r\n"),
    ("h11", "illegal request line", lambda seg: seg[:1] in b"\r\n" or _HIGH_BIT_TARGET.match(seg)),
    ("httptools", " url", lambda seg: True),
    ("httptools", "Duplicate Content-Length",
     lambda seg: len(set(re.findall(rb"(?i)\ncontent-length:[ \t]*([^\r\n]*?)[ \t]*\r", seg))) == 1),
]
_UPGRADE_ASKED = re.compile(rb"(?i)\nconnection:[^\r\n]*\bupgrade\b")


def _known(name: str, why: str, seg: bytes) -> bool:
    return any(n == name and w in why and bool(test(seg)) for n, w, test in KNOWN)


def _httptools_upgrade_quirk(data: bytes, ref, mr) -> int | None:
    """The index of the request after whose head llhttp (through httptools) switched while
    the relay's reader reads it as a plain request: one with content, or HTTP/1.0 (see the
    module's docstring); None when that isn't what happened."""
    if ref.stop != "raw" or not ref.messages or ref.messages[-1].kind != "request":
        return None
    i = len(ref.messages) - 1
    head = data[(ref.messages[i - 1].end if i else 0):ref.messages[i].head_end]
    plain = re.search(rb"(?i)\n(content-length: *0*[1-9]|transfer-encoding:)", head) or b" HTTP/1.0\r\n" in head
    ours = mr.messages[i] if i < len(mr.messages) else None
    if _UPGRADE_ASKED.search(head) and plain and (ours is None or ours.end != ref.messages[i].end):
        return i
    return None


def verdict(out, i: int):
    """What ``out`` says about message ``i``: the Message, or "reject", "inside" (it is still
    reading message i at the end of the bytes) or "abstain" (it stopped reading before)."""
    if i < len(out.messages):
        return out.messages[i]
    if len(out.messages) < i:
        return "abstain"
    return {"error": "reject", "partial": "inside", "close": "inside", "clean": "inside"}.get(out.stop, "abstain")


def check(side: str, data: bytes, asked=(), cuts=()) -> None:
    mr = read_mr(side, data, asked)
    split = read_mr(side, data, asked, cuts)
    if mr.stop == "error":   # the events of the feed that raised are lost: an interim head may be
        a, b = sorted((mr.messages, split.messages), key=len)
        assert (split.stop, split.status, b[:len(a)]) == ("error", mr.status, a)
    else:
        assert (split.messages, split.stop, split.at) == (mr.messages, mr.stop, mr.at), \
            "the reader's result depends on how the bytes arrive"
    refs = {"h11": read_h11(side, data, asked), "httptools": read_httptools(side, data, asked)}
    for name, ref in refs.items():   # a reference that hit a documented difference stops voting
        i = len(ref.messages)
        if ref.stop == "error" and i < len(mr.messages):
            m = mr.messages[i]
            if not _known(name, ref.why, data[(mr.messages[i - 1].end if i else 0):m.end]):
                continue
        elif name != "httptools" or (i := _httptools_upgrade_quirk(data, ref, mr)) is None:
            continue
        del ref.messages[i:]
        ref.stop = "abstain"
    for i, m in enumerate(mr.messages):
        votes = {name: verdict(ref, i) for name, ref in refs.items()}
        for name, v in votes.items():
            if isinstance(v, Message):
                assert v == m, f"{name} frames message {i} differently: {v} (relay: {m})"
            elif v == "inside":
                assert mr.stop == "close" and i == len(mr.messages) - 1, \
                    f"{name} is still inside message {i} at the end; the relay ended it: {m}"
        voting = [v for v in votes.values() if v != "abstain"]
        assert not voting or any(v != "reject" for v in voting), \
            f"message {i} ({m}) accepted; every reference rejects it: " + \
            "; ".join(f"{n}: {refs[n].why}" for n in votes if votes[n] == "reject")
    n = len(mr.messages)
    if mr.stop in ("partial", "raw"):
        for name, ref in refs.items():
            v = verdict(ref, n)
            assert not isinstance(v, Message), \
                f"{name} read message {n} ({v}); the relay's reader is {mr.stop} at {mr.at}"
            if mr.stop == "raw" and ref.stop == "raw" and len(ref.messages) == n:
                assert ref.at == mr.at, f"{name} switches protocols at {ref.at}, the relay at {mr.at}"


# --- the properties ------------------------------------------------------------------------------
# About 4 s per test; FRAMING_FUZZ_EXAMPLES=20000 for a longer hunt.
FUZZ = settings(max_examples=int(os.environ.get("FRAMING_FUZZ_EXAMPLES", "250")), deadline=None,
                suppress_health_check=[HealthCheck.too_slow])
CUTS = st.lists(st.integers(0, 400), max_size=6)


@FUZZ
@given(requests=st.lists(request(), min_size=1, max_size=3), mutations=MUTATIONS, cuts=CUTS)
# found by this test: an upgrade request's content was taken as the new protocol (and as a
# request of its own once the app answered 200); a trailer line needn't have been a field
@example(requests=[b"POST /p HTTP/1.1\r\nHost: a.example\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                   b"Content-Length: 2\r\n\r\nbb"], mutations=[], cuts=[])
@example(requests=[b"POST /p HTTP/1.0\r\nHost: a.example\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
                   b"Content-Length: 31\r\n\r\n" + b"b" * 30], mutations=[], cuts=[])
@example(requests=[b"GET /p HTTP/1.1\r\nHost: a.example\r\nTransfer-Encoding: chunked\r\n\r\n"
                   b"0\r\n:Trailer-A: 1\r\n\r\n"], mutations=[], cuts=[])
def test_requests_framed_like_h11_and_httptools(requests, mutations, cuts):
    check("request", mutate(b"".join(requests), mutations), cuts=cuts)


@FUZZ
@given(stream=responses(), mutations=MUTATIONS, cuts=CUTS)
@example(stream=((("POST", True),), b"HTTP/1.1 404\r\nTransfer-Encoding: Chunked\r\n\r\n"
                                     b"B;a\r\nddddddddddd\r\n0\r\n0\r\n\r\n"), mutations=[], cuts=[])
def test_responses_framed_like_h11_and_httptools(stream, mutations, cuts):
    asked, data = stream
    check("response", mutate(data, mutations), asked, cuts)
