"""Tunnel access policies (intunnel.access): the decision table, the API's access object, the
stored form; hypothesis properties over random policies, addresses and credentials."""

from __future__ import annotations

import ipaddress
import json

import pytest
from hypothesis import given, settings as hsettings, strategies as st

from intunnel import access
from intunnel.access import ALLOW, CHALLENGE, FORBID, Limits, Policy, Verify
from intunnel.errors import ValidationError


def fake_hash(password: str) -> str:
    return "h:" + password


def fake_verify(v: Verify) -> bool:
    return v.hash is not None and v.hash == fake_hash(v.password)


def policy(users=(), allow=(), deny=()) -> Policy:
    return Policy(tuple((u, fake_hash(p)) for u, p in users), tuple(map(ipaddress.ip_network, allow)),
                  tuple(map(ipaddress.ip_network, deny)))


ALICE = access.basic_header("alice", "wonderland")
WRONG = access.basic_header("alice", "looking-glass")
NOBODY = access.basic_header("mallory", "wonderland")

# (policy, visitor address, Authorization, expected): the rules in rows.
TABLE = [
    (access.PUBLIC, "203.0.113.9", None, ALLOW),
    (access.PUBLIC, "not an address", "Basic garbage", ALLOW),                     # public looks at nothing
    (policy(users=[("alice", "wonderland")]), "127.0.0.1", None, CHALLENGE),
    (policy(users=[("alice", "wonderland")]), "127.0.0.1", ALICE, ALLOW),
    (policy(users=[("alice", "wonderland")]), "127.0.0.1", WRONG, CHALLENGE),
    (policy(users=[("alice", "wonderland")]), "127.0.0.1", NOBODY, CHALLENGE),
    (policy(users=[("alice", "wonderland")]), "127.0.0.1", "Bearer " + ALICE[6:], CHALLENGE),
    (policy(users=[("alice", "wonderland")]), "127.0.0.1", "Basic !!!", CHALLENGE),
    (policy(users=[("alice", "wonderland")]), "127.0.0.1", "basic " + ALICE[6:], ALLOW),  # scheme: any case
    (policy(allow=["127.0.0.2/32"]), "127.0.0.1", None, FORBID),
    (policy(allow=["127.0.0.2/32"]), "127.0.0.2", None, ALLOW),
    (policy(allow=["127.0.0.0/8"]), "::ffff:127.0.0.1", None, ALLOW),                 # IPv4-mapped is IPv4
    (policy(allow=["127.0.0.0/8"]), "::1", None, FORBID),                             # another family
    (policy(allow=["::1/128"]), "::1", None, ALLOW),
    (policy(allow=["2001:db8::/32"]), "2001:db8:1::5", None, ALLOW),
    (policy(deny=["127.0.0.1/32"]), "127.0.0.1", None, FORBID),
    (policy(deny=["127.0.0.1/32"]), "127.0.0.2", None, ALLOW),
    (policy(allow=["127.0.0.0/8"], deny=["127.0.0.1/32"]), "127.0.0.1", None, FORBID),  # deny wins
    (policy(allow=["127.0.0.0/8"]), "garbage", None, FORBID),                          # fail closed
    (policy(deny=["10.0.0.0/8"]), "garbage", None, FORBID),
    # IP rules come first: a refused address is not asked for a password (and costs no hash)
    (policy(users=[("alice", "wonderland")], allow=["127.0.0.2/32"]), "127.0.0.1", ALICE, FORBID),
    (policy(users=[("alice", "wonderland")], allow=["127.0.0.2/32"]), "127.0.0.2", None, CHALLENGE),
    (policy(users=[("alice", "wonderland")], allow=["127.0.0.2/32"]), "127.0.0.2", ALICE, ALLOW),
    (policy(users=[("bob", "builder1"), ("alice", "wonderland")]), "127.0.0.1", ALICE, ALLOW),
]


@pytest.mark.parametrize("pol, address, authorization, expected", TABLE)
def test_decision_table(pol, address, authorization, expected):
    assert access.decide(pol, address, authorization, fake_verify) == expected


def test_an_unknown_user_is_still_verified_so_it_costs_a_hash():
    calls = []
    verdict = access.decide(policy(users=[("alice", "wonderland")]), "127.0.0.1", NOBODY,
                            lambda v: calls.append(v) or False)
    assert verdict == CHALLENGE and calls == [Verify("mallory", "wonderland", None)]


@pytest.mark.parametrize("peer, xff, trust, expected", [
    ("127.0.0.1", "198.51.100.7", True, "198.51.100.7"),
    ("127.0.0.1", "10.9.9.9, 198.51.100.7", True, "198.51.100.7"),   # nginx appends what it saw: the last
    ("::1", "2001:db8::5", True, "2001:db8::5"),
    ("::ffff:127.0.0.1", "198.51.100.7", True, "198.51.100.7"),
    ("10.0.0.3", "198.51.100.7", True, "198.51.100.7"),              # nginx on another host of the network
    ("fd00::3", "198.51.100.7", True, "198.51.100.7"),
    ("203.0.113.1", "198.51.100.7", True, "203.0.113.1"),            # a public peer is never our nginx
    ("127.0.0.1", "198.51.100.7", False, "127.0.0.1"),               # not behind a proxy: never trusted
    ("127.0.0.1", None, True, "127.0.0.1"),
    ("127.0.0.1", " , ", True, "127.0.0.1"),
])
def test_visitor_address(peer, xff, trust, expected):
    assert access.visitor_address(peer, xff, trust) == expected


@pytest.mark.parametrize("xff, trust, expected", [
    ("198.51.100.7", False, "198.51.100.7"),                  # the first relay faced the visitor
    ("10.9.9.9, 198.51.100.7, 10.0.0.3", True, "198.51.100.7"),  # ...or nginx, whose address it appended
    ("", True, "10.0.0.11"), (None, False, "10.0.0.11"),
])
def test_visitor_address_of_a_request_a_peer_relay_forwarded(xff, trust, expected):
    assert access.visitor_address("10.0.0.11", xff, trust, hop=True) == expected


@pytest.mark.parametrize("header, expected", [
    (access.basic_header("alice", "pass:with:colons"), ("alice", "pass:with:colons")),
    (access.basic_header("jürgen", "pässword"), ("jürgen", "pässword")),
    ("Basic " + __import__("base64").b64encode("jürgen:x".encode("latin-1")).decode(), ("jürgen", "x")),
    ("Basic " + __import__("base64").b64encode(b"nocolon").decode(), None),
    ("Basic", None), ("", None), (None, None), ("Digest abc", None), ("Basic a b c", None),
])
def test_parse_basic(header, expected):
    assert access.parse_basic(header) == expected


# --- the API's access object ------------------------------------------------------------------

LIMITS = Limits(max_users=3, max_cidrs=2, max_username=8, min_password=8, max_password=16)


def update(data, current=access.PUBLIC):
    return access.apply_update(current, data, LIMITS, fake_hash)


def test_update_sets_modes_and_keeps_what_is_not_given():
    p = update({"basic_auth": ["alice:wonderland", {"username": "bob", "password": "builder1"}],
                "ip_allow": ["10.1.2.3/8", "2001:db8::1"]})
    assert p.users == (("alice", "h:wonderland"), ("bob", "h:builder1"))
    assert [str(n) for n in p.allow] == ["10.0.0.0/8", "2001:db8::1/128"]   # host bits cleared; a host
    p2 = update({"ip_deny": ["::ffff:192.0.2.0/120"]}, p)
    assert p2.users == p.users and p2.allow == p.allow and [str(n) for n in p2.deny] == ["192.0.2.0/24"]
    kept = update({"basic_auth": [{"username": "bob"}]}, p2)                  # bob keeps his hash, alice goes
    assert kept.users == (("bob", "h:builder1"),)
    assert update({"public": True}, kept) == access.PUBLIC
    assert update({"basic_auth": [], "ip_allow": [], "ip_deny": []}, kept).public


def test_validation_is_done_before_any_password_is_hashed():
    hashed = []
    with pytest.raises(ValidationError):
        access.apply_update(access.PUBLIC, {"basic_auth": ["alice:wonderland", "bob:short"]}, LIMITS,
                            lambda p: hashed.append(p) or p)
    assert hashed == []


@pytest.mark.parametrize("data, field, words", [
    ("public", "access", "must be an object"),
    ({"password": ["a:b"]}, "access.password", "not an access mode"),
    ({"public": False}, "access.public", "only be true"),
    ({"public": True, "ip_allow": []}, "access.public", "alone"),
    ({"basic_auth": "alice:wonderland"}, "access.basic_auth", "must be a list"),
    ({"basic_auth": ["alice"]}, "access.basic_auth", "user:password"),
    ({"basic_auth": [7]}, "access.basic_auth", "user:password"),
    ({"basic_auth": [":wonderland"]}, "access.basic_auth", "1-8 characters"),
    ({"basic_auth": ["averylongname:wonderland"]}, "access.basic_auth", "1-8 characters"),
    ({"basic_auth": [" al:wonderland"]}, "access.basic_auth", "surrounding spaces"),
    ({"basic_auth": ["a\x01:wonderland"]}, "access.basic_auth", "control characters"),
    ({"basic_auth": ["alice:short"]}, "access.basic_auth", "8-16 characters"),
    ({"basic_auth": ["alice:" + "x" * 17]}, "access.basic_auth", "8-16 characters"),
    ({"basic_auth": ["alice:wonder\nland"]}, "access.basic_auth", "control characters"),
    ({"basic_auth": ["alice:wonderland", "alice:wonderland"]}, "access.basic_auth", "twice"),
    ({"basic_auth": [{"username": "alice"}]}, "access.basic_auth", "no password yet"),
    ({"basic_auth": [{"username": "alice", "pw": "x"}]}, "access.basic_auth", "username and"),
    ({"basic_auth": ["a:wonderland", "b:wonderland", "c:wonderland", "d:wonderland"]},
     "access.basic_auth", "at most 3"),
    ({"ip_allow": ["10.0.0.0/33"]}, "access.ip_allow", "not an IP address or CIDR"),
    ({"ip_allow": ["example.com"]}, "access.ip_allow", "not an IP address or CIDR"),
    ({"ip_deny": [None]}, "access.ip_deny", "IP address or CIDR"),
    ({"ip_deny": ["1.1.1.1", "2.2.2.2", "3.3.3.3"]}, "access.ip_deny", "at most 2"),
    ({"ip_allow": "10.0.0.0/8"}, "access.ip_allow", "must be a list"),
])
def test_bad_access_objects_name_their_field(data, field, words):
    with pytest.raises(ValidationError) as e:
        update(data)
    assert e.value.field == field and words in e.value.message
    assert "wonderland" not in e.value.message  # a password is never echoed


# --- stored form ------------------------------------------------------------------------------

def test_stored_form_has_hashes_and_the_view_has_none():
    p = update({"basic_auth": ["alice:wonderland"], "ip_allow": ["::1"]})
    stored = access.dump(p)
    assert json.loads(stored) == {"v": 1, "basic_auth": [{"user": "alice", "hash": "h:wonderland"}],
                                  "ip_allow": ["::1/128"], "ip_deny": []}
    assert access.load(stored) == p
    assert access.public_view(p) == {"public": False, "basic_auth": ["alice"], "ip_allow": ["::1/128"],
                                     "ip_deny": [], "members": None, "bypass_paths": []}
    assert access.dump(access.PUBLIC) is None and access.load(None) == access.load("") == access.PUBLIC


@pytest.mark.parametrize("stored", [
    "{", "[]", '{"v": 2}', '{"v": 1, "members": {"owner": true}}',     # a newer mode: fail closed
    '{"v": 1, "basic_auth": [{"user": "a"}]}', '{"v": 1, "ip_allow": ["nope"]}',
])
def test_unreadable_stored_policies_are_errors_not_public(stored):
    with pytest.raises(access.PolicyError):
        access.load(stored)


# --- properties -------------------------------------------------------------------------------

v4 = st.integers(0, 2**32 - 1).map(ipaddress.IPv4Address)
v6 = st.integers(0, 2**128 - 1).map(ipaddress.IPv6Address).filter(lambda a: a.ipv4_mapped is None)
addresses = st.one_of(v4, v6)
networks = st.one_of(
    st.tuples(v4, st.integers(0, 32)).map(lambda t: ipaddress.ip_network(f"{t[0]}/{t[1]}", strict=False)),
    st.tuples(v6, st.integers(0, 128)).map(lambda t: ipaddress.ip_network(f"{t[0]}/{t[1]}", strict=False)))
# what the API accepts: printable names without ':' or surrounding space; printable passwords
names = st.text(st.characters(categories=("L", "N", "P", "S"), max_codepoint=0x2FF, exclude_characters=":"),
                min_size=1, max_size=8)
passwords = st.text(st.characters(categories=("L", "N", "P", "S", "Zs"), max_codepoint=0x2FF),
                    min_size=8, max_size=16)
policies = st.builds(lambda users, allow, deny: Policy(tuple((u, fake_hash(p)) for u, p in users.items()),
                                                       tuple(allow), tuple(deny)),
                     st.dictionaries(names, passwords, max_size=3), st.lists(networks, max_size=3),
                     st.lists(networks, max_size=3))
headers = st.one_of(st.none(), st.text(max_size=20), st.builds(access.basic_header, names, passwords))


@hsettings(max_examples=300, deadline=None)
@given(policies, addresses, headers)
def test_property_the_decision_follows_the_rules(pol, address, authorization):
    verdict = access.decide(pol, str(address), authorization, fake_verify)
    denied = any(address in n for n in pol.deny if n.version == address.version)
    allowed = not pol.allow or any(address in n for n in pol.allow if n.version == address.version)
    credentials = access.parse_basic(authorization)
    good = credentials is not None and pol.hash_of(credentials[0]) == fake_hash(credentials[1])
    if denied or not allowed:
        assert verdict == FORBID                       # IP rules: whatever the credentials
    elif pol.users and not good:
        assert verdict == CHALLENGE
    else:
        assert verdict == ALLOW


@hsettings(max_examples=200, deadline=None)
@given(policies, v4, headers)
def test_property_an_ipv4_mapped_visitor_is_the_ipv4_visitor(pol, address, authorization):
    mapped = f"::ffff:{address}"
    assert access.decide(pol, mapped, authorization, fake_verify) == \
        access.decide(pol, str(address), authorization, fake_verify)


@hsettings(max_examples=200, deadline=None)
@given(policies)
def test_property_stored_form_round_trips(pol):
    assert access.load(access.dump(pol)) == pol
    assert "h:" not in json.dumps(access.public_view(pol))


@hsettings(max_examples=200, deadline=None)
@given(names, st.text(max_size=30))
def test_property_basic_header_round_trips(user, password):
    assert access.parse_basic(access.basic_header(user, password)) == (user, password)


@hsettings(max_examples=200, deadline=None)
@given(st.dictionaries(names, passwords, max_size=3), st.lists(networks, max_size=2))
def test_property_a_valid_update_gives_what_was_asked(users, allow):
    data = {"basic_auth": [f"{u}:{p}" for u, p in users.items()], "ip_allow": [str(n) for n in allow]}
    limits = Limits(max_users=3, max_cidrs=2, max_username=8, min_password=8, max_password=16)
    p = access.apply_update(access.PUBLIC, data, limits, fake_hash)
    assert p.users == tuple((u, fake_hash(pw)) for u, pw in users.items())
    assert list(p.allow) == list(dict.fromkeys(allow))


# --- bypass paths -----------------------------------------------------------------------------

HOOKS = ("/webhooks/stripe", "/api/v1/hook")

# (request target, bypasses HOOKS): segment boundaries, and never a path an app could read otherwise.
BYPASS_TABLE = [
    ("/webhooks/stripe", True),
    ("/webhooks/stripe/", True),
    ("/webhooks/stripe/x/y", True),
    ("/webhooks/stripe?x=1", True),
    ("/webhooks/stripe?next=/../admin", True),      # the query is not the path
    ("/webhooks/stripe/a.b/c.json", True),          # dots inside a segment are names
    ("/webhooks/stripe/...", True),                 # three dots: a name, not a dot-segment
    ("/webhooks/stripe/%41", True),                 # an encoded letter can't move the path
    ("/api/v1/hook", True),
    ("/webhooks/stripe-admin", False),              # a sibling, not a child
    ("/webhooks/stripeX", False),
    ("/webhooks/strip", False),
    ("/webhooks", False),
    ("/", False),
    ("/Webhooks/Stripe", False),                    # case-sensitive: protected, not bypassed
    ("/webhooks/stripe;x", False),                  # ';' is not a boundary
    ("/webhooks/stripe/../admin", False),           # dot-segments: the app may resolve them
    ("/webhooks/stripe/./x", False),
    ("/webhooks/stripe/..", False),
    ("/webhooks/stripe/.", False),
    ("/webhooks/stripe/..;/admin", False),          # '..;' is '..' to some servers
    ("/webhooks/stripe/.;x/admin", False),
    ("/webhooks/stripe//admin", False),
    ("//webhooks/stripe", False),
    ("/webhooks/stripe\\..\\admin", False),
    ("/webhooks/stripe\\x", False),
    ("/webhooks/stripe/%2e%2e/admin", False),
    ("/webhooks/stripe/%2E%2E/admin", False),
    ("/webhooks/stripe/%2e./admin", False),
    ("/webhooks/stripe/.%2E/admin", False),
    ("/webhooks/stripe%2f..%2fadmin", False),
    ("/webhooks/stripe/%2F", False),
    ("/webhooks/stripe/%5cadmin", False),
    ("/webhooks/stripe/%5C", False),
    ("/webhooks/stripe/%252e%252e/admin", False),   # double encoding
    ("/webhooks/stripe#x", False),
    ("/webhooks/stripe/\u00e9", False),             # not ASCII: not what a client sends
    ("/webhooks/stripe/\x00", False),
    ("/webhooks/stripe/a b", False),
    ("http://myapp.localhost/webhooks/stripe", False),   # absolute-form
    ("myapp.localhost:80", False),                  # authority-form
    ("*", False),
    ("", False),
    (None, False),
]


@pytest.mark.parametrize("target, expected", BYPASS_TABLE)
def test_bypass_table(target, expected):
    assert access.bypassed(HOOKS, target) is expected
    assert Policy(bypass=HOOKS).bypasses(target) is expected


@pytest.mark.parametrize("value, stored", [
    ("/webhooks/stripe", "/webhooks/stripe"), ("/webhooks/stripe/", "/webhooks/stripe"),
    ("  /hooks ", "/hooks"), ("/a;b", "/a;b"), ("/a/%41", "/a/%41"), ("/x.json", "/x.json"),
])
def test_bypass_paths_are_stored_canonical(value, stored):
    assert update({"bypass_paths": [value]}).bypass == (stored,)


@pytest.mark.parametrize("value, words", [
    ("webhooks", "start with '/'"), ("/", "every path"), ("//", "plain path"), ("/a/../b", "plain path"),
    ("/a/./b", "plain path"), ("/a/%2e%2e", "plain path"), ("/a%2Fb", "plain path"), ("/a\\b", "plain path"),
    ("/a?x=1", "plain path"), ("/a b", "plain path"), ("/a#b", "plain path"), ("/\u00e9", "plain path"),
    ("/_intunnel", "relay's own"), ("/_intunnel/auth", "relay's own"), ("/" + "a" * 256, "characters"),
    ("", "characters"), (5, "path prefix"), (None, "path prefix"),
])
def test_bad_bypass_paths_name_their_field(value, words):
    with pytest.raises(ValidationError) as e:
        update({"bypass_paths": [value]})
    assert e.value.field == "access.bypass_paths" and words in e.value.message


def test_bypass_paths_limit_duplicates_and_clearing():
    with pytest.raises(ValidationError) as e:
        update({"bypass_paths": [f"/p{i}" for i in range(21)]})
    assert e.value.field == "access.bypass_paths" and "at most 20" in e.value.message
    p = update({"bypass_paths": ["/a", "/a/", "/b"], "basic_auth": ["alice:wonderland"]})
    assert p.bypass == ("/a", "/b")
    assert update({"ip_deny": ["10.0.0.0/8"]}, p).bypass == ("/a", "/b")   # not given: kept
    assert update({"bypass_paths": []}, p).bypass == ()
    assert update({"public": True}, p) == access.PUBLIC


def test_bypass_stored_form_and_view():
    p = update({"basic_auth": ["alice:wonderland"], "bypass_paths": ["/webhooks/stripe"]})
    assert json.loads(access.dump(p))["bypass_paths"] == ["/webhooks/stripe"]
    assert access.load(access.dump(p)) == p
    assert access.public_view(p)["bypass_paths"] == ["/webhooks/stripe"]
    # on their own they restrict nothing (public), yet are kept for a password set later
    alone = update({"bypass_paths": ["/hooks"]})
    assert alone.public and access.load(access.dump(alone)) == alone
    assert access.public_view(alone)["public"] is True
    assert "bypass_paths" not in json.loads(access.dump(update({"basic_auth": ["alice:wonderland"]})))
    for bad in ('{"v": 1, "bypass_paths": ["/a/../b"]}', '{"v": 1, "bypass_paths": "/a"}',
                '{"v": 1, "bypass_paths": [7]}'):
        with pytest.raises(access.PolicyError):
            access.load(bad)


def test_bypass_in_the_decision_ip_rules_still_apply():
    p = Policy(users=(("alice", fake_hash("wonderland")),), deny=(ipaddress.ip_network("10.0.0.0/8"),),
               bypass=HOOKS)
    assert access.evaluate(p, "127.0.0.1", None, "/webhooks/stripe") == ALLOW
    assert access.evaluate(p, "127.0.0.1", WRONG, "/webhooks/stripe/x") == ALLOW   # no hash spent
    assert access.evaluate(p, "10.1.2.3", None, "/webhooks/stripe") == FORBID
    assert access.evaluate(p, "127.0.0.1", None, "/webhooks/stripe-admin") == CHALLENGE
    assert access.evaluate(p, "127.0.0.1", None, "/webhooks/stripe/%2e%2e/admin") == CHALLENGE
    assert access.evaluate(p, "127.0.0.1", None) == CHALLENGE                      # no target: no bypass
    assert isinstance(access.evaluate(p, "127.0.0.1", WRONG, "/admin"), Verify)
    assert access.decide(p, "127.0.0.1", WRONG, fake_verify, "/admin") == CHALLENGE


# The matcher's properties: segments built from names, dots, encodings and separators.
segments = st.one_of(
    st.text(st.sampled_from("abcXYZ09-_~"), min_size=1, max_size=5),
    st.sampled_from([".", "..", "...", ".;x", "..;", "a.b", "%2e", "%2E%2e", "%2f", "%5C", "%25", "%41",
                     "", "a\\b", "a;b", "stripe-admin", "stripe"]))
paths = st.lists(segments, min_size=1, max_size=6).map(lambda s: "/" + "/".join(s))
queries = st.one_of(st.just(""), st.text(st.sampled_from("a=/.%?&"), max_size=6).map(lambda q: "?" + q))
prefixes = st.lists(st.text(st.sampled_from("abc-"), min_size=1, max_size=4), min_size=1, max_size=3).map(
    lambda s: "/" + "/".join(s))


def _dot_segment(path: str) -> bool:
    return any(seg.split(";", 1)[0] in (".", "..") for seg in path.split("/"))


@hsettings(max_examples=500, deadline=None)
@given(st.lists(prefixes, min_size=1, max_size=3), paths, queries)
def test_property_a_bypass_is_a_canonical_path_on_a_segment_boundary(prefix_list, path, query):
    got = access.bypassed(tuple(prefix_list), path + query)
    if got:
        lowered = path.lower()
        assert not _dot_segment(path) and "//" not in path and "\\" not in path
        assert not any(e in lowered for e in ("%2e", "%2f", "%5c", "%25"))
        assert any(path == p or path.startswith(p + "/") for p in prefix_list)
    else:
        canonical = access.canonical_path(path + query) is not None
        assert not canonical or not any(path == p or path.startswith(p + "/") for p in prefix_list)


@hsettings(max_examples=300, deadline=None)
@given(prefixes, paths)
def test_property_whatever_follows_a_bypass_prefix_it_never_escapes_it(prefix, rest):
    """A target that bypasses, resolved the way an app would (percent-decoded, dot-segments
    removed, backslashes as slashes), is still under the prefix."""
    import posixpath
    from urllib.parse import unquote
    target = prefix + rest
    if access.bypassed((prefix,), target):
        resolved = posixpath.normpath(unquote(unquote(target)).replace("\\", "/"))
        assert resolved == prefix or resolved.startswith(prefix + "/")


@hsettings(max_examples=300, deadline=None)
@given(st.lists(prefixes, min_size=1, max_size=3), paths, queries)
def test_property_a_sibling_never_bypasses(prefix_list, path, query):
    """Appending to the last segment of a prefix ('/hooks' -> '/hooks-x') never bypasses."""
    for p in prefix_list:
        sibling = p + "-" + path.lstrip("/")
        if not any(sibling == q or sibling.startswith(q + "/") for q in prefix_list):
            assert not access.bypassed(tuple(prefix_list), sibling + query)
