"""The framing patterns on Pythons before 3.11 (the client runs on 3.9): without possessive
quantifiers they must accept and capture exactly what the possessive ones do."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from intunnel.wire import http1
from intunnel.wire.http1 import _without_possessives

PATTERNS = [http1._REQUEST_LINE, http1._HEADER_BLOCK, http1._STATUS_LINE, http1._RESPONSE_HEAD,
            http1._line_dropper(frozenset({"cookie", "x-forwarded-for"}))]


@pytest.mark.parametrize("possessive, greedy", [
    (r"a++b*+c?+d{0,3}+", r"a+b*c?d{0,3}"),
    (r"[*+]++x", r"[*+]+x"),                       # a + inside a class is a character
    (r"[]+]++[^]+]*+", r"[]+]+[^]+]*"),            # "]" first in a class is a character too
    (r"\++(?:x)*+a+?", r"\++(?:x)*a+?"),           # an escaped +, a group, a lazy quantifier
    (rb"\r\n(?:a):[^\r\n]*+", rb"\r\n(?:a):[^\r\n]*"),
])
def test_possessive_marks_are_dropped_and_nothing_else(possessive, greedy):
    assert _without_possessives(possessive) == greedy


_ALPHABET = st.sampled_from(list("GET /x HTTP/1.1 200 OK:\r\n\t\x00\x7fAZaz09-_!~\x80\xff;,") +
                            ["Host: a\r\n", "Cookie: c=1\r\n", "X-Forwarded-For: 1\r\n", "\r\n"])


@settings(max_examples=400, deadline=None)
@given(st.lists(_ALPHABET, max_size=40).map("".join))
def test_the_greedy_patterns_match_what_the_possessive_ones_do(text):
    for pattern in PATTERNS:
        subject = text.encode("latin-1") if isinstance(pattern.pattern, bytes) else text
        greedy = re.compile(_without_possessives(pattern.pattern), pattern.flags)
        for start in (0, min(2, len(subject))):
            a, b = pattern.match(subject, start), greedy.match(subject, start)
            assert (a and (a.span(), a.groups())) == (b and (b.span(), b.groups()))
        assert pattern.sub(b"" if isinstance(subject, bytes) else "", subject) == \
            greedy.sub(b"" if isinstance(subject, bytes) else "", subject)
