"""The client's command line: it takes every tunnel token the app hands out, and the session's
own access rules (--basic-auth, --allow-ip, --deny-ip)."""

import argparse
import io

import pytest

from intunnel.client import cli
from intunnel.security import new_tunnel_token


def test_tunnel_tokens_never_look_like_an_option():
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    for _ in range(2000):  # a leading "-" came up about once in 64 tokens
        token = new_tunnel_token()
        assert not token.startswith("-")
        assert parser.parse_args(["3000", "--server", "http://localhost:8080", "--token", token]).token == token


# --- a session's own access rules (--basic-auth, --allow-ip, --deny-ip) ---


def _args(*argv):
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    return parser.parse_args(["3000", *argv])


def test_no_rules_sends_none():
    assert cli.session_rules(_args(), environ={}) is None


def test_rules_are_repeatable_and_gathered_from_options_environment_and_stdin():
    args = _args("--basic-auth", "bob:builder123", "--basic-auth", "carol:with:colons ok",
                 "--allow-ip", "10.0.0.0/8", "--allow-ip", " ::1 ", "--deny-ip", "127.0.0.2",
                 "--basic-auth-stdin")
    rules = cli.session_rules(args, stdin=io.StringIO("dave:from-stdin-1\n\n"),
                              environ={cli.BASIC_AUTH_ENV: "erin:from-env-12\n"})
    assert rules == {"basic_auth": ["bob:builder123", "carol:with:colons ok", "erin:from-env-12",
                                    "dave:from-stdin-1"],
                     "ip_allow": ["10.0.0.0/8", "::1"], "ip_deny": ["127.0.0.2"]}
    assert cli.session_rules(_args("--deny-ip", "2001:db8::/32"), environ={}) == {"ip_deny": ["2001:db8::/32"]}


@pytest.mark.parametrize("argv, words", [
    (["--basic-auth", "bob"], "USER:PASS"),
    (["--basic-auth", ":secret123"], "USER:PASS"),
    (["--basic-auth", "bob:"], "USER:PASS"),
    (["--allow-ip", "10.0.0.0/33"], "--allow-ip takes an IP address or CIDR"),
    (["--deny-ip", "example.com"], "--deny-ip takes an IP address or CIDR"),
    (["--basic-auth", "bob:" + "x" * 17000], "too many access rules"),
])
def test_bad_rules_are_refused_before_connecting(argv, words):
    with pytest.raises(ValueError, match=words):
        cli.session_rules(_args(*argv), environ={})


def test_a_bad_rule_exits_with_2_and_says_why(capsys, monkeypatch):
    monkeypatch.setattr(cli.config, "load", lambda: {})
    code = cli.run(_args("--server", "http://localhost:8080", "--token", "t", "--basic-auth", "bob"))
    assert code == 2 and "--basic-auth takes USER:PASS" in capsys.readouterr().err


def test_help_says_the_password_shows_in_ps():
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    text = " ".join(parser.format_help().split())
    assert "shows in `ps`" in text and "--basic-auth-stdin" in text and cli.BASIC_AUTH_ENV in text


def test_stop_signals_without_the_loops_signal_handlers_as_on_windows():
    """Windows has no loop.add_signal_handler: Ctrl-C and SIGTERM still stop the client."""
    import asyncio
    import os
    import signal

    from intunnel.client.cli import on_stop_signals

    class WindowsLikeLoop(asyncio.SelectorEventLoop):
        def add_signal_handler(self, *args):
            raise NotImplementedError

    loop = WindowsLikeLoop()
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        for sig in (signal.SIGTERM, signal.SIGINT):
            stopped = loop.create_future()
            on_stop_signals(loop, lambda: stopped.done() or stopped.set_result(True))
            loop.call_soon(os.kill, os.getpid(), sig)
            assert loop.run_until_complete(asyncio.wait_for(stopped, 5)) is True
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)
        loop.close()
