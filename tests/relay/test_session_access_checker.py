"""A session that narrowed its tunnel's policy, at the relay without sockets (relay/access.py
NarrowedGate): stored policy AND session rules, the credential cache keyed by both, a policy
reload that keeps the narrowing, and the session's password checked without a hash."""

from __future__ import annotations

import asyncio

from intunnel import access, session_access
from intunnel.access import ALLOW, CHALLENGE, FORBID, Verify
from intunnel.relay.access import SESSION_ONLY, Gate, NarrowedGate, gate_for
from intunnel.relay.store import TunnelInfo
from tests.relay.test_access_checker import ALICE, BOB, checker, head, stored

LIMITS = access.Limits()
CAROL = access.basic_header("carol", "sesame-open")


def narrowed(stored_text, rules) -> NarrowedGate:
    return gate_for(TunnelInfo(7, "myapp", 3000, "tok", access=stored_text),
                    session_access.parse(rules, LIMITS))


def settle(c, gate, h, address="127.0.0.1") -> str:
    verdict = c.check(gate, h, address)
    if isinstance(verdict, Verify):
        return ALLOW if asyncio.run(c.verify(gate, h.get("authorization"), verdict)) else CHALLENGE
    return verdict


def test_no_rules_is_the_plain_gate():
    tunnel = TunnelInfo(7, "myapp", 3000, "tok")
    assert type(gate_for(tunnel)) is Gate and gate_for(tunnel).policy is None
    assert type(gate_for(tunnel, session_access.parse({}, LIMITS))) is Gate


def test_a_session_password_on_a_public_tunnel():
    c, gate = checker(), narrowed(None, {"basic_auth": ["carol:sesame-open"]})
    assert gate.policy is not None                                   # the relay's fast path checks it
    assert c.check(gate, head(), "127.0.0.1") == CHALLENGE
    verdict = c.check(gate, head(CAROL), "127.0.0.1")
    assert isinstance(verdict, Verify) and verdict.hash == SESSION_ONLY
    assert settle(c, gate, head(access.basic_header("carol", "wrong-one"))) == CHALLENGE
    assert settle(c, gate, head(CAROL)) == ALLOW
    assert c.check(gate, head(CAROL), "127.0.0.1") == ALLOW          # cached for this session
    assert c.pending == 0


def test_session_ip_rules_on_a_public_tunnel():
    c, gate = checker(), narrowed(None, {"ip_deny": ["127.0.0.2"]})
    assert c.check(gate, head(), "127.0.0.2") == FORBID
    assert c.check(gate, head(), "127.0.0.1") == ALLOW
    gate = narrowed(None, {"ip_allow": ["::1"]})
    assert c.check(gate, head(), "127.0.0.1") == FORBID and c.check(gate, head(), "::1") == ALLOW


def test_stored_and_session_both_must_pass():
    c = checker()
    # the tunnel lets alice and bob in; the session narrows it to alice, from 127.0.0.1 only
    gate = narrowed(stored(deny=(access.parse_cidr("127.0.0.3"),)),
                    {"basic_auth": ["alice:wonderland"], "ip_allow": ["127.0.0.0/30"]})
    assert c.check(gate, head(ALICE), "10.0.0.1") == FORBID          # the session's allow list
    assert c.check(gate, head(ALICE), "127.0.0.3") == FORBID         # the stored deny list
    assert c.check(gate, head(), "127.0.0.1") == CHALLENGE
    assert settle(c, gate, head(BOB)) == CHALLENGE                   # stored: yes; session: no
    assert settle(c, gate, head(ALICE)) == ALLOW                     # both
    assert c.check(gate, head(ALICE), "127.0.0.1") == ALLOW
    # a session password the stored policy doesn't know opens nothing
    gate = narrowed(stored(), {"basic_auth": ["carol:sesame-open"]})
    assert settle(c, gate, head(CAROL)) == CHALLENGE                 # session: yes; stored: no
    assert settle(c, gate, head(ALICE)) == CHALLENGE                 # stored: yes; session: no


def test_credentials_cached_for_the_stored_policy_alone_do_not_pass_a_narrowed_session():
    c = checker()
    plain = Gate(7, "myapp", stored())
    assert settle(c, plain, head(BOB)) == ALLOW and c.check(plain, head(BOB), "127.0.0.1") == ALLOW
    gate = narrowed(plain.stored, {"basic_auth": ["alice:wonderland"]})
    assert settle(c, gate, head(BOB)) == CHALLENGE
    assert settle(c, gate, head(ALICE)) == ALLOW
    # ...and the other way round: what this session verified is its own
    other = narrowed(plain.stored, {"basic_auth": ["alice:wonderland"]})
    assert isinstance(c.check(other, head(ALICE), "127.0.0.1"), Verify)


def test_a_stored_policy_change_keeps_the_narrowing_and_misses_the_cache():
    c = checker()
    gate = narrowed(None, {"basic_auth": ["alice:wonderland"], "ip_deny": ["127.0.0.2"]})
    assert settle(c, gate, head(ALICE)) == ALLOW
    before = gate.stamp
    assert gate.load(stored(users=("alice",)))                       # the owner sets a password
    assert gate.stamp != before and gate.base.policy is gate.policy
    assert isinstance(c.check(gate, head(ALICE), "127.0.0.1"), Verify)  # checked again, both
    assert settle(c, gate, head(ALICE)) == ALLOW
    assert c.check(gate, head(ALICE), "127.0.0.2") == FORBID         # the session's rule stays
    assert not gate.load(gate.stored)
    assert gate.load(None)                                           # public again: the session's rules stay
    assert gate.policy is access.PUBLIC
    assert c.check(gate, head(), "127.0.0.1") == CHALLENGE
    assert c.check(gate, head(ALICE), "127.0.0.2") == FORBID
