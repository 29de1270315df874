"""Rule R12 of the proxy state machine, without sockets: a keep-alive request to the attached
tunnel goes straight out only if the access guard admits it; otherwise nothing of it reaches
the upstream, which is parked, and the request is routed anew (where Link._route decides)."""

from __future__ import annotations

from tests.relay.test_proxy_state import Driver

REQ = b"GET /%d HTTP/1.1\r\nHost: myapp.localhost\r\n\r\n"
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def driver(verdicts: list[bool]) -> Driver:
    d = Driver()
    seen = []

    class Guard:
        @staticmethod
        def admits(head):
            seen.append(head.target)
            return verdicts.pop(0)
    d.m.guard = Guard()
    d.guard_calls = seen
    return d


def test_an_admitted_keep_alive_request_goes_straight_out():
    d = driver([True])
    d.send(REQ % 1)
    assert d.routes == ["myapp.localhost"] and d.guard_calls == []   # the first is Link._route's to judge
    d.attach().app(OK)
    d.send(REQ % 2)
    assert d.guard_calls == ["/2"] and d.routes == ["myapp.localhost"]   # no new route
    assert d.upstream.count(b"GET /2 HTTP/1.1\r\n") == 1


def test_a_request_the_guard_does_not_admit_is_routed_anew_and_sent_nowhere():
    d = driver([False])
    d.send(REQ % 1)
    d.attach().app(OK)
    d.send(REQ % 2)
    assert d.guard_calls == ["/2"]
    assert d.routes == ["myapp.localhost", "myapp.localhost"]   # routed again: Link._route decides
    assert d.detached == [True] and not d.has_upstream            # the idle upstream is parked
    assert b"/2" not in d.upstream                                # not a byte of /2 went to the app
    d.apply(d.m.route_failed(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                             d.now))
    assert d.visitor.endswith(b"401 Unauthorized\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
    assert d.closed is False and d.m.closed


def test_a_pipelined_request_is_judged_when_its_turn_comes():
    d = driver([False])
    d.send(REQ % 1 + REQ % 2)       # both at once: the second waits for the first exchange (R4, R5)
    d.attach()
    assert d.guard_calls == []
    d.app(OK)                       # the first completes: now the second is judged
    assert d.guard_calls == ["/2"] and b"/1" in d.upstream and b"/2" not in d.upstream
