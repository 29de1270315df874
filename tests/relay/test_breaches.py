"""Tenant-safety breaches of issue 10 (3, 5, 6, 7, 8 and the relay part of 10), against the
in-process relay, each written as the rule that must hold.

Local apps are ``tests.support.rawapps.RawApp`` servers (honest or misbehaving on purpose),
visitors are raw sockets (``RawVisitor``) so every byte, keep-alive and pipelining is the
test's.  After every hostile exchange the relay must be back at rest: every tunnel's visitor
slots at zero and no socket of a gone visitor still open in the relay.
"""

from __future__ import annotations

import select
import time

import pytest

from tests.support.rawapps import (SETTLE, Closed, RawApp, RawVisitor, Stalled, Tenants, http_response,
                                   pattern_bytes, request)
from tests.support.tunnel import wait_for


# --- 3: unbounded visitor buffering while a route is pending ---------------------------------------

def test_visitor_reads_stay_paused_while_a_host_switch_waits_for_its_route(settings, db):
    """Rule: visitor reads are paused whenever no upstream is attached; a visitor costs the relay
    one read buffer plus one head.  A keep-alive visitor switches from a fast tunnel to one whose
    agent is slow to give a data connection, and uploads as fast as it can: the relay must stop
    taking its bytes (the visitor's socket stops being writable) long before LIMIT."""
    limit = 32 << 20
    with Tenants(settings, {"fast": RawApp("fast")}, slow=("slow",)) as t:
        v = t.visitor(sndbuf=64 * 1024)
        v.send(request("GET", "/", t.host("fast")))
        assert v.read_response().status == 200
        v.send(request("POST", "/upload", t.host("slow"), [("Content-Length", str(1 << 30))]))
        v.sock.setblocking(False)
        block = b"x" * (1 << 20)
        taken, held_back, deadline = 0, False, time.monotonic() + 5
        while taken < limit and not held_back and time.monotonic() < deadline:
            # The relay reading on: writable again at once.  Paused: the kernel's buffers fill and
            # the socket stays unwritable; a second of that is the relay holding back (the rule).
            _, writable, _ = select.select([], [v.sock], [], 1.0)
            if not writable:
                held_back = True
                continue
            try:
                taken += v.sock.send(block)
            except BlockingIOError:
                continue
            except OSError:
                held_back = True  # the relay cut the visitor: it is not buffering it either
        assert held_back and taken < limit, (
            f"the relay took {taken >> 20} MiB of a request body while its route was still pending "
            "(and went on reading): visitor reads were not paused")
        # The slowed agent goes away: the pending route fails, and the relay lets the visitor go
        # (it may not see the visitor's own close before: its reads are paused).
        t.hand["slow"].close()
        t.assert_settled(v)


# --- 5: slot holding -------------------------------------------------------------------------------

def test_a_dribbling_request_body_is_cut_after_relay_body_timeout(settings, db):
    """Rule: a request body must bring relay_body_min_rate bytes/s over each relay_body_timeout
    window (nginx's client_body_timeout).  A POST that dribbles one byte every 0.2 s (5 B/s, the
    minimum being 64) is cut, with a 408 or a close, well within a few windows, and frees its slot."""
    window = 0.5
    with Tenants(settings, {"myapp": RawApp("myapp")}, relay_body_timeout=window, relay_body_min_rate=64,
                 relay_upstream_timeout=60.0) as t:
        v = t.visitor()
        v.send(request("POST", "/upload", t.host("myapp"), [("Content-Length", "1000")]) + b"x")
        started = time.monotonic()
        answer, sent = None, 1
        while answer is None and time.monotonic() - started < 6 * window:
            try:
                answer = v.read_response(timeout=0.2)  # the relay's 408, if it says anything
            except Stalled:
                sent += v.send(b"x")   # still open: one more byte (pacing, not synchronisation)
            except Closed:
                answer = "closed"
        held = time.monotonic() - started
        assert answer is not None, (f"the relay still held a POST dribbling 5 B/s after {held:.1f}s "
                                    f"({sent} bytes) with relay_body_timeout={window}, relay_body_min_rate=64")
        if answer != "closed":
            assert answer.status == 408, (answer.status, answer.body)
        assert "/upload" not in t.apps["myapp"].targets()  # the app never got the whole body
        t.assert_settled(v)


def test_an_idle_keep_alive_visitor_is_closed_after_relay_keepalive_timeout(settings, db):
    """Rule: idle keep-alive visitors are closed after relay_keepalive_timeout (and free their slot)."""
    with Tenants(settings, {"myapp": RawApp("myapp")}, relay_keepalive_timeout=0.5) as t:
        v = t.visitor()
        v.send(request("GET", "/", t.host("myapp")))
        assert v.read_response().status == 200
        try:
            extra = v.wait_closed(timeout=3.0)
        except Stalled:
            pytest.fail("an idle keep-alive visitor was still open 3 s after its response "
                        "(relay_keepalive_timeout=0.5): it holds a tunnel slot as long as it likes")
        assert extra == b"", extra
        t.assert_settled(v)


def test_a_full_tunnel_evicts_its_idlest_keep_alive_visitor_before_refusing_a_new_one(settings, db):
    """Rule: a tunnel at relay_max_visitors_per_tunnel closes its idlest keep-alive visitor (between
    requests) to serve a new one, instead of answering 503."""
    with Tenants(settings, {"myapp": RawApp("myapp")}, relay_max_visitors_per_tunnel=2,
                 relay_keepalive_timeout=60.0) as t:
        idlest, recent = t.visitor(), t.visitor()
        for v in (idlest, recent):
            v.send(request("GET", "/", t.host("myapp")))
            assert v.read_response().status == 200
        recent.send(request("GET", "/again", t.host("myapp")))  # `idlest` is now the idlest
        assert recent.read_response().status == 200
        newcomer = t.visitor()
        newcomer.send(request("GET", "/new", t.host("myapp"), [("Connection", "close")]))
        r = newcomer.read_response()
        assert r.status == 200, (f"a full tunnel of idle keep-alive visitors refused a new one: "
                                 f"{r.status} {r.body[:200]!r}")
        assert r.body == b"myapp GET /new"
        try:
            idlest.wait_closed(timeout=3.0)
        except Stalled:
            pytest.fail("the idlest keep-alive visitor was not the one closed")
        recent.send(request("GET", "/still", t.host("myapp")))
        assert recent.read_response().status == 200  # the more recent one was kept
        t.assert_settled(idlest, recent, newcomer)


# --- 6: Connection: close answered as keep-alive ---------------------------------------------------

def answer_with(raw: bytes):
    """A local app that answers every request with ``raw`` and keeps its connection open."""
    def respond(app, conn, req):
        return conn.send(raw)
    return respond


@pytest.mark.parametrize("app_says", ["keep-alive", None])
def test_the_response_to_a_connection_close_request_says_connection_close(settings, db, app_says):
    """Rule: a response after which the relay closes the visitor says ``Connection: close``
    (and not keep-alive), whatever the app said."""
    headers = [("Connection", app_says)] if app_says else []
    app = RawApp("myapp", answer_with(http_response(200, b"hello", headers)))
    with Tenants(settings, {"myapp": app}) as t:
        v = t.visitor()
        v.send(request("GET", "/", t.host("myapp"), [("Connection", "close")]))
        r = v.read_response()
        assert (r.status, r.body) == (200, b"hello")
        assert r.connection_tokens() == {"close"}, (
            f"the relay closes after this response but it says Connection: {r.get('connection')}")
        assert v.wait_closed(timeout=3.0) == b""
        t.assert_settled(v)


# --- 10 (relay part): Connection: close after a response the relay can't follow ---------------------

def test_connection_close_is_honoured_after_a_duplicate_content_length_response(settings, db):
    """Rule: ``Connection: close`` is honoured whatever the response: after an app's response with a
    duplicate (identical) Content-Length, the visitor gets either that response exactly (saying
    Connection: close) or the relay's 502, and then its connection is closed."""
    raw = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello"
    with Tenants(settings, {"myapp": RawApp("myapp", answer_with(raw))}) as t:
        v = t.visitor()
        v.send(request("GET", "/", t.host("myapp"), [("Connection", "close")]))
        try:
            everything = v.wait_closed(timeout=3.0)
        except Stalled:
            pytest.fail("the visitor asked Connection: close and its connection is still open 3 s after "
                        f"the response: {v.received[:300]!r}")
        head, _, body = everything.partition(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        if status == 200:
            assert body == b"hello", body
            assert b"\r\nconnection: close" in head.lower(), head
        else:
            assert status == 502, everything[:300]
        t.assert_settled(v)


# --- 7: slot leak --------------------------------------------------------------------------------

HOSTILE = {
    "valid head, then a malformed one": b"GET / HTTP/1.1\r\nHost: {h}\r\n\r\nNOT A REQUEST\r\n\r\n",
    "valid head, then a bad chunked body": (b"GET / HTTP/1.1\r\nHost: {h}\r\n\r\n"
                                            b"POST / HTTP/1.1\r\nHost: {h}\r\nTransfer-Encoding: chunked\r\n\r\n"
                                            b"zz\r\n\r\n"),
    "chunked head with a bad first chunk": (b"POST / HTTP/1.1\r\nHost: {h}\r\nTransfer-Encoding: chunked\r\n\r\n"
                                            b"zz\r\n\r\n"),
    "valid head, then conflicting Content-Length": (b"GET / HTTP/1.1\r\nHost: {h}\r\n\r\n"
                                                    b"POST / HTTP/1.1\r\nHost: {h}\r\nContent-Length: 1\r\n"
                                                    b"Content-Length: 2\r\n\r\nab"),
}


@pytest.mark.parametrize("kind", list(HOSTILE))
def test_malformed_pipelined_requests_do_not_leak_tunnel_slots(settings, db, kind):
    """Rule: a slot is held exactly while a visitor exists.  Twice the tunnel's slots' worth of
    visitors send a valid head and, in the same packet, something malformed; every one is
    answered or closed, every slot comes back, and a new visitor is served (not 503)."""
    limit = 4
    with Tenants(settings, {"myapp": RawApp("myapp")}, relay_max_visitors_per_tunnel=limit) as t:
        payload = HOSTILE[kind].replace(b"{h}", t.host("myapp").encode())
        for _ in range(2 * limit):
            with RawVisitor(t.port) as v:
                v.send(payload)  # one sendall: one segment on loopback, read by the relay at once
                try:
                    v.wait_closed(timeout=3.0)
                except Stalled:
                    pytest.fail(f"a visitor that sent {kind!r} was neither answered in full nor closed")
        status, body = t.get("myapp", "/after")
        assert status == 200, (f"after {2 * limit} visitors sent {kind!r}, a new visitor got {status}: "
                               f"{body[:200]!r}; slots held: {t.slots()}")
        t.assert_settled()


# --- 8: requests after a half-close, pipelining across tunnels ---------------------------------------

def test_a_request_after_the_app_closed_is_answered_or_never_executed(settings, db):
    """Rule: once the relay decided to close a visitor (here the app closed its keep-alive
    connection after a ``Connection: close`` answer), nothing more the visitor sends is forwarded,
    to any tunnel; if the relay keeps the visitor instead, the next request is routed and answered
    like any other.  Either way no request is executed with its answer lost (a client retrying a
    stale connection would run that POST twice)."""
    with Tenants(settings, {"a": RawApp("a"), "b": RawApp("b")}) as t:
        v = t.visitor()
        v.send(request("GET", "/closing", t.host("a")))
        r = v.read_response()
        assert (r.status, r.body) == (200, b"a GET /closing")
        if "close" in r.connection_tokens():
            try:
                assert v.wait_closed(timeout=3.0) == b""   # the relay's FIN (a half-close is enough)
            except Stalled:
                pytest.fail("a response that says Connection: close, and the visitor's connection stays open")
        v.send(request("POST", "/pay", t.host("b"), body=b"once"))  # a stale connection's retry
        try:
            answer = v.read_response(timeout=3.0)
        except Closed:
            answer = None
        except Stalled:
            pytest.fail("a request after the app's close was neither answered nor refused with a close")
        if answer is not None:
            assert (answer.status, answer.get("x-app"), answer.body) == (200, "b", b"b POST /pay")
            assert t.apps["b"].targets().count("/pay") == 1
        else:
            wait_for(lambda: not t.relay.relay.visitors, SETTLE, message="the relay to drop the visitor")
            assert t.get("b", "/fence")[0] == 200
            assert "/pay" not in t.apps["b"].targets(), (
                "a POST sent after the relay closed the visitor was executed and its answer lost: "
                f"{t.apps['b'].targets()}")
        t.assert_settled(v)


def test_pipelined_requests_to_two_tunnels_are_answered_in_order_each_from_its_own(settings, db):
    """Rule: pipelined requests are answered strictly in order, each from its own tunnel: a large
    response from tunnel A arrives whole before tunnel B's answer to the request pipelined behind it."""
    size = 4 << 20
    with Tenants(settings, {"a": RawApp("a"), "b": RawApp("b")}) as t:
        v = t.visitor()
        v.send(request("GET", f"/big/{size}", t.host("a")) + request("GET", "/after-big", t.host("b")))
        try:
            first = v.read_response(timeout=5)
        except (Stalled, Closed):
            came = v.received.find(b"X-App: b\r\n")
            where = f": tunnel b's answer came in its body, {came} bytes into the stream" if came >= 0 else ""
            pytest.fail(f"tunnel a's {size}-byte response never completed{where}")
        assert first.status == 200 and first.get("x-app") == "a", (first.status, first.headers)
        expected = pattern_bytes(size)
        if first.body != expected:
            wrong = next((i for i, (x, y) in enumerate(zip(first.body, expected)) if x != y), len(first.body))
            pytest.fail(f"tunnel a's {size}-byte body went wrong at byte {wrong}: "
                        f"{first.body[wrong:wrong + 80]!r}")
        second = v.read_response(timeout=5)
        assert (second.status, second.get("x-app"), second.body) == (200, "b", b"b GET /after-big")
        t.assert_settled(v)


def test_a_request_pipelined_after_connection_close_is_never_forwarded(settings, db):
    """Rule (RFC 9112 §9.6): a request pipelined after one that says ``Connection: close`` is never
    forwarded; the visitor gets the first answer and a close."""
    with Tenants(settings, {"myapp": RawApp("myapp")}) as t:
        v = t.visitor()
        v.send(request("GET", "/first", t.host("myapp"), [("Connection", "close")]) +
               request("POST", "/second", t.host("myapp"), body=b"abc"))
        r = v.read_response()
        assert (r.status, r.body) == (200, b"myapp GET /first")
        try:
            rest = v.wait_closed(timeout=3.0)
        except Stalled:
            pytest.fail("the visitor's connection stayed open after a Connection: close response")
        assert rest == b"", f"a second response came after Connection: close: {rest[:200]!r}"
        assert t.get("myapp", "/fence")[0] == 200
        assert "/second" not in t.apps["myapp"].targets(), \
            f"the request pipelined after Connection: close was executed: {t.apps['myapp'].targets()}"
        t.assert_settled(v)
