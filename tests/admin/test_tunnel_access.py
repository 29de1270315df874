"""`intunnel-admin tunnel access` (issue 13): show, set, keep, clear a tunnel's access policy;
passwords stored hashed and never printed; bad rules are one line."""

from __future__ import annotations

import re

import pytest

from intunnel import access
from intunnel.models import Tunnel, User
from intunnel.security import verify_password


@pytest.fixture
def tunnel(installed):
    installed.open_models()
    Tunnel.create(owner=User.get(User.username == "root"), name="App", subdomain="myapp", local_port=3000,
                  token="secret-token-1")
    return installed


def stored_policy() -> access.Policy:
    return access.load(Tunnel.get(Tunnel.subdomain == "myapp").access)


def test_show_a_public_tunnel(tunnel):
    assert tunnel.json("tunnel", "access", "myapp")["access"] == {
        "public": True, "basic_auth": [], "ip_allow": [], "ip_deny": [], "members": None, "bypass_paths": []}
    text = tunnel.ok("tunnel", "access", "myapp").stdout
    assert "access: " in text and "public" in text and "allowed addresses: any" in text
    assert "access:" in tunnel.ok("tunnel", "show", "myapp").stdout


def test_set_keep_and_clear(tunnel):
    out = tunnel.ok("tunnel", "access", "myapp", "--basic-auth", "alice:wonderland", "--allow-ip", "10.0.0.0/8",
                    "--allow-ip", "::1", "--deny-ip", "10.9.0.0/16")
    assert "tunnel 'myapp'" in out.stdout and "alice" in out.stdout and "wonderland" not in out.stdout
    policy = stored_policy()
    assert verify_password("wonderland", policy.hash_of("alice"))
    assert [str(n) for n in policy.allow] == ["10.0.0.0/8", "::1/128"]
    # passwords from standard input (not in ps); alice kept as she is; the IP rules untouched
    result = tunnel.json("tunnel", "access", "myapp", "--basic-auth", "alice", "--basic-auth-stdin",
                         input="bob:builder123\n")
    assert result["ok"] is True and result["access"]["basic_auth"] == ["alice", "bob"]
    assert result["access"]["ip_allow"] == ["10.0.0.0/8", "::1/128"]
    policy = stored_policy()
    assert verify_password("wonderland", policy.hash_of("alice"))
    assert verify_password("builder123", policy.hash_of("bob"))
    assert tunnel.json("tunnel", "access", "myapp", "--allow-ip", "")["access"]["ip_allow"] == []
    assert tunnel.json("tunnel", "access", "myapp", "--no-basic-auth")["access"]["basic_auth"] == []
    assert tunnel.json("tunnel", "access", "myapp", "--public")["access"]["public"] is True
    assert Tunnel.get(Tunnel.subdomain == "myapp").access is None


@pytest.mark.parametrize("args, match", [
    (("--basic-auth", "alice:short"), "password of 'alice' must be"),
    (("--basic-auth", "alice"), "user 'alice' has no password yet"),
    (("--allow-ip", "10.0.0.0/99"), "not an IP address or CIDR"),
])
def test_bad_rules_are_one_line_and_change_nothing(tunnel, args, match):
    line = tunnel.fails("tunnel", "access", "myapp", *args, match=match)
    assert "short" not in line.split("must be")[-1]
    assert Tunnel.get(Tunnel.subdomain == "myapp").access is None


def test_public_alone_and_unknown_tunnel(tunnel):
    tunnel.fails("tunnel", "access", "myapp", "--public", "--deny-ip", "10.0.0.0/8", code=2, match="alone")
    tunnel.fails("tunnel", "access", "ghost", match="unknown tunnel 'ghost'")


def test_members_only(tunnel):
    out = tunnel.ok("tunnel", "access", "myapp", "--members", "any").stdout
    assert "members only: any account" in out
    assert stored_policy().members == access.members_rule.Members()
    result = tunnel.json("tunnel", "access", "myapp", "--member", "root", "--member-domain", "example.com")
    assert result["access"]["members"] == {"owner_only": False, "users": ["root"], "email_domains": ["example.com"]}
    assert re.search(r"members only: +the owner, root, @example.com", tunnel.ok("tunnel", "access", "myapp").stdout)
    assert tunnel.json("tunnel", "access", "myapp", "--members", "owner")["access"]["members"]["owner_only"]
    tunnel.fails("tunnel", "access", "myapp", "--member", "ghost", match="there is no user 'ghost'")
    tunnel.fails("tunnel", "access", "myapp", "--members", "owner", "--member", "root", code=2, match="alone")
    assert tunnel.json("tunnel", "access", "myapp", "--no-members")["access"]["members"] is None
    assert Tunnel.get(Tunnel.subdomain == "myapp").access is None


def test_bypass_paths(tunnel):
    out = tunnel.ok("tunnel", "access", "myapp", "--basic-auth", "alice:wonderland",
                    "--bypass-path", "/webhooks/stripe", "--bypass-path", "/hooks/").stdout
    assert re.search(r"bypass paths: +/webhooks/stripe, /hooks", out)
    assert stored_policy().bypass == ("/webhooks/stripe", "/hooks")
    tunnel.ok("tunnel", "access", "myapp", "--deny-ip", "10.0.0.0/8")   # not given: kept
    assert stored_policy().bypass == ("/webhooks/stripe", "/hooks")
    tunnel.fails("tunnel", "access", "myapp", "--bypass-path", "/a/../b", match="access.bypass_paths")
    tunnel.fails("tunnel", "access", "myapp", "--public", "--bypass-path", "/x", code=2, match="alone")
    assert tunnel.json("tunnel", "access", "myapp", "--bypass-path", "")["access"]["bypass_paths"] == []
    assert stored_policy().bypass == ()
