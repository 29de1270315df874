"""The relay's access checks without sockets (relay/access.py): the per-session Gate, the
credential cache (bounded, keyed by the policy), and failing closed on an unreadable policy."""

from __future__ import annotations

import asyncio

from intunnel import access
from intunnel.access import ALLOW, CHALLENGE, FORBID, Verify
from intunnel.relay.access import Checker, Gate
from intunnel.security import hash_password
from intunnel.settings import load_settings
from intunnel.wire.http1 import parse_request_head

ALICE, BOB = access.basic_header("alice", "wonderland"), access.basic_header("bob", "builder123")
HASHES = {"alice": hash_password("wonderland"), "bob": hash_password("builder123")}


def stored(users=("alice", "bob"), **rules) -> str:
    return access.dump(access.Policy(tuple((u, HASHES[u]) for u in users), **rules))


def head(authorization: str | None = None, xff: str | None = None):
    lines = ["GET / HTTP/1.1", "Host: myapp.localhost"]
    if authorization:
        lines.append(f"Authorization: {authorization}")
    if xff:
        lines.append(f"X-Forwarded-For: {xff}")
    return parse_request_head("\r\n".join(lines).encode())


def checker(**overrides) -> Checker:
    return Checker(load_settings(env={"INTUNNEL_CONFIG": ""}, overrides=overrides))


def settle(c: Checker, gate: Gate, h) -> str:
    """What the relay does: check, and on a Verify hash the password (then it is cached)."""
    verdict = c.check(gate, h, "127.0.0.1")
    if isinstance(verdict, Verify):
        return ALLOW if asyncio.run(c.verify(gate, h.get("authorization"), verdict)) else CHALLENGE
    return verdict


def test_verified_credentials_are_cached_and_wrong_ones_are_not():
    c, gate = checker(), Gate(7, "myapp", stored())
    assert isinstance(c.check(gate, head(ALICE), "127.0.0.1"), Verify)
    assert settle(c, gate, head(ALICE)) == ALLOW
    assert c.check(gate, head(ALICE), "127.0.0.1") == ALLOW          # no hash the second time
    wrong = head(access.basic_header("alice", "nope"))
    assert settle(c, gate, wrong) == CHALLENGE
    assert isinstance(c.check(gate, wrong, "127.0.0.1"), Verify)     # still costs a hash: never cached
    assert c.check(gate, head(), "127.0.0.1") == CHALLENGE
    assert b"wonderland" not in b"".join(c._verified)                # keys are HMACs, not the header


def test_a_policy_change_misses_every_cached_entry():
    c, gate = checker(), Gate(7, "myapp", stored())
    assert settle(c, gate, head(ALICE)) == ALLOW
    assert not gate.load(gate.stored)                                 # the same text: nothing changes
    assert gate.load(stored(users=("alice",)))                        # alice's hash is the same...
    assert isinstance(c.check(gate, head(ALICE), "127.0.0.1"), Verify)  # ...but the cache is not trusted
    other = Gate(8, "other", gate.stored)                             # another tunnel, same policy text
    assert settle(c, gate, head(ALICE)) == ALLOW
    assert isinstance(c.check(other, head(ALICE), "127.0.0.1"), Verify)


def test_the_cache_is_bounded_least_recently_used_first():
    c, gate = checker(relay_access_cache_size=1), Gate(7, "myapp", stored())
    assert settle(c, gate, head(ALICE)) == ALLOW and settle(c, gate, head(BOB)) == ALLOW
    assert len(c._verified) == 1
    assert c.check(gate, head(BOB), "127.0.0.1") == ALLOW
    assert isinstance(c.check(gate, head(ALICE), "127.0.0.1"), Verify)


def test_a_check_against_a_policy_replaced_meanwhile_is_cached_under_the_old_one():
    """The password is verified against the hash of the policy of the moment; if the policy
    changes while the hash runs, the new one must not inherit the result."""
    c, gate = checker(), Gate(7, "myapp", stored())
    verdict = c.check(gate, head(ALICE), "127.0.0.1")

    async def race():
        task = asyncio.ensure_future(c.verify(gate, ALICE, verdict))
        await asyncio.sleep(0)
        gate.load(stored(users=("bob",)))   # alice removed while her password is checked
        return await task
    assert asyncio.run(race()) is True      # it was right for the old policy...
    assert c.check(gate, head(ALICE), "127.0.0.1") == Verify("alice", "wonderland", None)  # no alice now
    assert settle(c, gate, head(ALICE)) == CHALLENGE   # (an unknown user costs a hash all the same)


def test_ip_rules_use_the_address_nginx_saw_only_behind_the_proxy():
    import ipaddress
    rules = {"allow": (ipaddress.ip_network("198.51.100.0/24"),)}
    gate = Gate(7, "myapp", stored(users=(), **rules))
    assert checker().check(gate, head(xff="198.51.100.7"), "127.0.0.1") == FORBID
    assert checker(relay_trust_proxy=True).check(gate, head(xff="198.51.100.7"), "127.0.0.1") == ALLOW
    assert checker(relay_trust_proxy=True).check(gate, head(xff="198.51.100.7"), "192.0.2.1") == FORBID


def test_an_unreadable_policy_refuses_everyone_and_public_is_none():
    gate = Gate(7, "myapp", '{"v": 1, "sso": {}}')  # a mode this version does not know
    for address in ("127.0.0.1", "::1", "garbage"):
        assert checker().check(gate, head(ALICE), address) == FORBID
    assert Gate(7, "myapp", None).policy is None and Gate(7, "myapp", stored(users=())).policy is None
