"""The client's -v exchange log (``client/exchanges.py``): http1.MessageReader follows both directions."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from intunnel.client.exchanges import ExchangeLog


def req(method: str, target: str, *headers: str) -> bytes:
    return (f"{method} {target} HTTP/1.1\r\nHost: a\r\n" + "".join(h + "\r\n" for h in headers) + "\r\n").encode()


def run(requests: bytes, responses: bytes, bytewise: bool = False, close: bool = False):
    seen = []
    log = ExchangeLog(seen.append, clock=lambda: 0.0)
    log.requests(requests)
    if bytewise:
        for i in range(len(responses)):
            log.responses(responses[i:i + 1])
    else:
        log.responses(responses)
    if close:
        log.closed()
    return [(x.method, x.path, x.status, x.bytes) for x in seen], log


PIPELINE = (req("GET", "/a") + req("HEAD", "/b") + req("GET", "/c") + req("POST", "/d", "Content-Length: 3") + b"xyz")
ANSWERS = (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
           b"HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\n\r\n"
           b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n"
           b"3\r\nabc\r\n0\r\n\r\n"
           b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n")
EXPECTED = [("GET", "/a", 200, 5), ("HEAD", "/b", 404, 0), ("GET", "/c", 201, 3), ("POST", "/d", 204, 0)]


@pytest.mark.parametrize("bytewise", [False, True])
def test_reports_each_exchange_however_the_bytes_arrive(bytewise):
    assert run(PIPELINE, ANSWERS, bytewise)[0] == EXPECTED


def test_one_line_per_exchange_in_the_v_format():
    seen = []
    log = ExchangeLog(seen.append, clock=lambda: 10.0)
    log.requests(req("GET", "/download?size=3"))
    log.responses(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc")
    assert seen[0].line(10.0125) == "GET /download?size=3 -> 200 3 B 12.5 ms"


def test_head_responses_end_with_their_head_whatever_they_announce():
    requests = req("HEAD", "/x") + req("HEAD", "/y") + req("GET", "/z")
    answers = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"HTTP/1.1 200 OK\r\n\r\n"                    # no framing: still no body
               b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    assert run(requests, answers)[0] == [("HEAD", "/x", 200, 0), ("HEAD", "/y", 200, 0), ("GET", "/z", 200, 2)]


def test_a_response_read_until_close_is_reported_at_the_close():
    done, log = run(req("GET", "/stream"), b"HTTP/1.1 200 OK\r\n\r\nsome bytes", close=False)
    assert done == []
    done, log = run(req("GET", "/stream"), b"HTTP/1.1 200 OK\r\n\r\nsome bytes", close=True)
    assert done == [("GET", "/stream", 200, 10)]


def test_a_response_cut_short_by_the_close_is_not_reported():
    assert run(req("GET", "/x"), b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", close=True)[0] == []


def test_switching_protocols_is_the_last_line():
    requests = req("GET", "/a") + req("GET", "/ws", "Connection: Upgrade", "Upgrade: websocket")
    answers = (b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
               b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n\x81\x02hi")
    done, log = run(requests, answers)
    assert done == [("GET", "/a", 200, 0), ("GET", "/ws", 101, 0)] and log.off
    log.requests(b"\x81\x82masked frame bytes")    # raw from here on: no error, nothing more
    log.responses(b"HTTP/1.1 200 OK\r\n\r\n")


def test_an_upgrade_answered_normally_leaves_http_going_on():
    requests = req("GET", "/ws", "Connection: Upgrade", "Upgrade: websocket") + req("GET", "/next")
    answers = (b"HTTP/1.1 426 Upgrade Required\r\nContent-Length: 4\r\n\r\nnope"
               b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    assert run(requests, answers)[0] == [("GET", "/ws", 426, 4), ("GET", "/next", 200, 2)]


@pytest.mark.parametrize("answers", [
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\n\r\n",   # nobody asked for the second
    b"garbage that is not HTTP\r\n\r\n",
    b"HTTP/1.1 101 Switching Protocols\r\n\r\n",                                 # not asked to switch
])
def test_gives_up_quietly_on_what_it_does_not_follow(answers):
    done, log = run(req("GET", "/a"), answers)
    assert log.off and done in ([], [("GET", "/a", 200, 2)])
    log.requests(req("GET", "/b"))
    log.responses(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    log.closed()


def test_a_request_it_cannot_read_stops_the_log_not_the_traffic():
    done, log = run(b"NOT HTTP\r\n\r\n", b"HTTP/1.1 400 Bad Request\r\n\r\n")
    assert done == [] and log.off


@settings(max_examples=200, deadline=None)
@given(cuts=st.lists(st.integers(0, len(ANSWERS)), max_size=8),
       edits=st.lists(st.tuples(st.integers(0, len(ANSWERS)), st.binary(max_size=3)), max_size=3))
def test_never_raises_and_any_split_reports_the_same(cuts, edits):
    answers = ANSWERS
    for at, junk in edits:
        answers = answers[:at] + junk + answers[at + 1:]
    whole, _ = run(PIPELINE, answers, close=True)
    seen = []
    log = ExchangeLog(seen.append, clock=lambda: 0.0)
    log.requests(PIPELINE)
    points = sorted(set(cuts) | {0, len(answers)})
    for a, b in zip(points, points[1:]):
        log.responses(answers[a:b])
    log.closed()
    assert [(x.method, x.path, x.status, x.bytes) for x in seen] == whole


def test_a_head_too_large_stops_the_log():
    done, log = run(req("GET", "/a"), b"HTTP/1.1 200 OK\r\nX: ")
    for _ in range(70):
        log.responses(b"a" * 1000)
    assert log.off


def test_a_big_read_ending_inside_the_next_head_is_not_a_head_too_large():
    seen = []
    log = ExchangeLog(seen.append, clock=lambda: 0.0)
    log.requests(req("GET", "/big") + req("GET", "/next"))
    log.responses(b"HTTP/1.1 200 OK\r\nContent-Length: 200000\r\n\r\n" + b"x" * 200_000 + b"HTTP/1.1 204 No")
    log.responses(b" Content\r\n\r\n")
    assert [(x.path, x.status, x.bytes) for x in seen] == [("/big", 200, 200_000), ("/next", 204, 0)]
