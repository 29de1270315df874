"""A client session's own access rules (intunnel.session_access), without a relay: validated as
the API's access object with the same limits, kept as keyed digests, shown without passwords."""

from __future__ import annotations

import pytest

from intunnel import access, session_access
from intunnel.errors import ValidationError

LIMITS = access.Limits(max_users=2, max_cidrs=2)


def test_rules_parse_into_digests_and_ip_lists():
    narrow = session_access.parse({"basic_auth": ["bob:builder123", "carol:sesame-open"],
                                   "ip_allow": ["10.1.2.3/8"], "ip_deny": ["::ffff:127.0.0.2"]}, LIMITS)
    assert [u for u, _ in narrow.rules.users] == ["bob", "carol"]
    assert all("builder123" not in d and len(d) == 64 for _, d in narrow.rules.users)
    assert [str(n) for n in narrow.rules.allow] == ["10.0.0.0/8"]
    assert [str(n) for n in narrow.rules.deny] == ["127.0.0.2/32"]
    assert narrow.accepts("bob", "builder123") and narrow.accepts("carol", "sesame-open")
    assert not narrow.accepts("bob", "sesame-open") and not narrow.accepts("eve", "builder123")
    assert not narrow.accepts("bob", "builder1234") and not narrow.accepts("Bob", "builder123")
    assert session_access.view(narrow) == {"basic_auth": ["bob", "carol"], "ip_allow": ["10.0.0.0/8"],
                                           "ip_deny": ["127.0.0.2/32"]}


def test_each_session_has_its_own_key_and_stamp():
    a, b = (session_access.parse({"basic_auth": ["bob:builder123"]}, LIMITS) for _ in range(2))
    assert a.key != b.key and a.stamp != b.stamp and a.rules.users != b.rules.users
    assert not session_access.Narrowing(a.rules, b.key, a.stamp).accepts("bob", "builder123")


@pytest.mark.parametrize("data", [None, {}, {"basic_auth": [], "ip_allow": [], "ip_deny": []}])
def test_no_rules_is_no_narrowing(data):
    assert session_access.parse(data, LIMITS) is None
    assert session_access.view(None) is None and session_access.summary(None) == ""


@pytest.mark.parametrize("data, field, words", [
    ([], "access", "must be an object"),
    ("bob:builder123", "access", "must be an object"),
    ({"public": True}, "access.public", "not a rule a session can add"),
    ({"members": {}}, "access.members", "not a rule a session can add"),
    ({"basic_auth": ["bob"]}, "access.basic_auth", "user:password"),
    ({"basic_auth": ["bob:short"]}, "access.basic_auth", "the password of 'bob' must be 8-256"),
    ({"basic_auth": ["bob:builder123", "bob:builder456"]}, "access.basic_auth", "listed twice"),
    ({"basic_auth": ["a:builder123", "b:builder123", "c:builder123"]}, "access.basic_auth", "at most 2"),
    ({"basic_auth": [{"username": "bob"}]}, "access.basic_auth", "has no password yet"),
    ({"basic_auth": "bob:builder123"}, "access.basic_auth", "must be a list"),
    ({"ip_allow": ["10.0.0.0/33"]}, "access.ip_allow", "not an IP address or CIDR"),
    ({"ip_deny": ["1.1.1.1", "2.2.2.2", "3.3.3.3"]}, "access.ip_deny", "at most 2"),
    ({"ip_deny": [7]}, "access.ip_deny", "IP address or CIDR"),
])
def test_invalid_rules_are_refused_with_the_apis_messages(data, field, words):
    with pytest.raises(ValidationError) as caught:
        session_access.parse(data, LIMITS)
    assert caught.value.field == field and words in caught.value.message
    assert "builder" not in caught.value.message  # never a password in a message


@pytest.mark.parametrize("shown, line", [
    ({"basic_auth": ["bob"]}, "basic auth (1 user)"),
    ({"basic_auth": ["bob", "carol"], "ip_deny": ["127.0.0.2/32"]}, "basic auth (2 users), not from 1 address range"),
    ({"ip_allow": ["10.0.0.0/8", "::1/128"], "ip_deny": []}, "only from 2 address ranges"),
])
def test_summary(shown, line):
    assert session_access.summary(shown) == line
