"""The rules of intunnel login's device authorization (intunnel.device_auth): tables and properties."""

from __future__ import annotations

import re
from datetime import datetime, timedelta

import pytest
from hypothesis import given, strategies as st

from intunnel import device_auth as da

T0 = datetime(2026, 1, 15, 10, 0, 0)
LIVE = da.Pending(expires_at=T0 + timedelta(seconds=900), interval=5)
CODE_RE = re.compile(r"^[BCDFGHJKLMNPQRSTVWXZ]{4}-[BCDFGHJKLMNPQRSTVWXZ]{4}$")


def test_the_alphabet_has_no_lookalikes_and_no_vowels():
    assert len(set(da.ALPHABET)) == len(da.ALPHABET) == 20
    assert not set(da.ALPHABET) & set("AEIOUY0123456789")
    assert da.ALPHABET.isupper()


@pytest.mark.parametrize("state, at, expected", [
    (LIVE, T0, da.PENDING),                                                        # first poll
    (LIVE, T0 + timedelta(seconds=900), da.EXPIRED),                               # at expiry: over
    (LIVE, T0 + timedelta(seconds=899), da.PENDING),
    (da.Pending(LIVE.expires_at, 5, approved=True), T0, da.APPROVED),
    (da.Pending(LIVE.expires_at, 5, denied=True), T0, da.DENIED),
    (da.Pending(LIVE.expires_at, 5, approved=True, consumed=True), T0, da.EXPIRED),  # second redemption
    (da.Pending(LIVE.expires_at, 5, denied=True), T0 + timedelta(hours=1), da.EXPIRED),
    (da.Pending(LIVE.expires_at, 5, last_poll_at=T0), T0 + timedelta(seconds=4.9), da.SLOW_DOWN),
    (da.Pending(LIVE.expires_at, 5, last_poll_at=T0), T0 + timedelta(seconds=5), da.PENDING),
    # too early is told so even once approved: ignoring the interval never gets the token sooner
    (da.Pending(LIVE.expires_at, 5, last_poll_at=T0, approved=True), T0 + timedelta(seconds=1), da.SLOW_DOWN),
    (da.Pending(LIVE.expires_at, 5, last_poll_at=T0, approved=True), T0 + timedelta(seconds=6), da.APPROVED),
    (da.Pending(LIVE.expires_at, 10, last_poll_at=T0), T0 + timedelta(seconds=6), da.SLOW_DOWN),
])
def test_poll_verdicts(state, at, expected):
    assert da.poll_verdict(state, at).code == expected


@pytest.mark.parametrize("typed, expected", [
    ("BCDF-GHJK", "BCDF-GHJK"), ("bcdfghjk", "BCDF-GHJK"), (" bcdf ghjk ", "BCDF-GHJK"),
    ("BC-DF-GH-JK", "BCDF-GHJK"), ("BCDF-GHJ", None), ("BCDF-GHJKL", None), ("BCDF-GHJ0", None),
    ("ABCD-EFGH", None), ("", None), (None, None), (12345678, None), ("B" * 100, None),
    ("ＢＣＤＦ-ＧＨＪＫ", None),  # full-width letters are not the code
])
def test_normalize_user_code(typed, expected):
    assert da.normalize_user_code(typed) == expected


@pytest.mark.parametrize("value, expected", [
    ("laptop", "laptop"), ("  my   laptop ", "my laptop"), ("", None), ("   ", None), (None, None),
    ("x" * 64, "x" * 64), ("x" * 65, None), ("evil\x1b[31m", None), ("del\x7f", None), (42, None),
])
def test_clean_client_name(value, expected):
    assert da.clean_client_name(value, 64) == expected


def test_approvable_only_while_live_and_undecided():
    assert da.approvable(LIVE, T0)
    assert not da.approvable(LIVE, LIVE.expires_at)
    for decided in (dict(approved=True), dict(denied=True), dict(consumed=True)):
        assert not da.approvable(da.Pending(LIVE.expires_at, 5, **decided), T0)


def test_token_name_and_codes_equal():
    assert da.token_name("laptop") == "intunnel login on laptop"
    assert da.codes_equal("BCDF-GHJK", "BCDF-GHJK") and not da.codes_equal("BCDF-GHJK", "BCDF-GHJL")


@given(st.randoms(use_true_random=False))
def test_generated_codes_are_well_formed_and_normalize_to_themselves(rnd):
    code = da.new_user_code(rnd.randrange)
    assert CODE_RE.match(code)
    assert da.normalize_user_code(code) == code
    assert da.normalize_user_code(code.lower().replace("-", " ")) == code


@given(st.text(max_size=40))
def test_normalize_accepts_only_codes_of_the_alphabet(text):
    code = da.normalize_user_code(text)
    assert code is None or CODE_RE.match(code)


@given(interval=st.integers(1, 60), lifetime=st.integers(1, 3600), polls=st.lists(st.floats(0, 120), max_size=30))
def test_slow_down_and_expiry_property(interval, lifetime, polls):
    """Replaying any poll schedule: every SLOW_DOWN grows the interval by 5 s, a poll at least
    the current interval after the last one is never SLOW_DOWN, and nothing but EXPIRED comes
    after the lifetime; a client following client_next_interval keeps the server's interval."""
    state = da.Pending(expires_at=da.expires_at(T0, lifetime), interval=interval)
    now, client_interval = T0, interval
    for gap in polls:
        now = now + timedelta(seconds=gap)
        verdict = da.poll_verdict(state, now)
        if now >= state.expires_at:
            assert verdict.code == da.EXPIRED
        elif state.last_poll_at is not None and gap >= state.interval:
            assert verdict.code == da.PENDING
        if verdict.code == da.SLOW_DOWN:
            assert verdict.interval == state.interval + da.SLOW_DOWN_STEP
        else:
            assert verdict.interval == state.interval
        client_interval = da.client_next_interval(client_interval, verdict.code)
        assert client_interval == verdict.interval
        state = da.Pending(state.expires_at, verdict.interval, last_poll_at=now)
