"""The rules of ``intunnel login``'s device authorization (RFC 8628), pure: no I/O, no clock.

A client asks for a pair of codes: a long random **device code** it keeps to itself (the
database stores only its SHA-256) and a short **user code** a person reads off the terminal
and types into the dashboard's ``/device`` page.  The client then polls with its device
code; each poll gets one verdict from ``poll_verdict``:

    EXPIRED_TOKEN          the pair's lifetime is over (or it was redeemed already)
    ACCESS_DENIED          the person pressed Deny
    SLOW_DOWN              polled sooner than ``interval`` after the last poll: the interval
                           grows by ``SLOW_DOWN_STEP`` for every later poll (RFC 8628 3.5)
    AUTHORIZATION_PENDING  nobody approved it yet
    APPROVED               hand the token over, once (the caller's UPDATE makes it one-time)

User codes are 8 letters from ``ALPHABET``, shown as ``BCDF-GHJK``: consonants only, so no
digit or letter can be misread for another (0/O, 1/I/L, 5/S...) and no word is spelled;
20^8 (about 2.6e10) codes, of which only a few are live at once, and the page's form is
rate-limited, so guessing one is hopeless within its lifetime.  Typing is forgiving:
lower case, spaces, a missing or extra dash are all the same code (``normalize_user_code``).
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Optional

ALPHABET = "BCDFGHJKLMNPQRSTVWXZ"  # 20 consonants; no vowels (no words), no Y (reads as a vowel)
USER_CODE_LENGTH = 8
GROUP = 4                          # BCDF-GHJK
DEVICE_CODE_BYTES = 32
SLOW_DOWN_STEP = 5                 # seconds added to the interval by each slow_down (RFC 8628 3.5)

EXPIRED = "EXPIRED_TOKEN"
DENIED = "ACCESS_DENIED"
SLOW_DOWN = "SLOW_DOWN"
PENDING = "AUTHORIZATION_PENDING"
APPROVED = "APPROVED"


def new_user_code(randbelow=secrets.randbelow) -> str:
    """``BCDF-GHJK``: ``USER_CODE_LENGTH`` letters of ``ALPHABET``, dashed in groups of four."""
    letters = "".join(ALPHABET[randbelow(len(ALPHABET))] for _ in range(USER_CODE_LENGTH))
    return format_user_code(letters)


def format_user_code(letters: str) -> str:
    return "-".join(letters[i:i + GROUP] for i in range(0, len(letters), GROUP))


def normalize_user_code(typed: object) -> Optional[str]:
    """The canonical ``BCDF-GHJK`` form of what a person typed, or None when it can't be a code."""
    if not isinstance(typed, str) or len(typed) > 4 * USER_CODE_LENGTH:
        return None
    letters = "".join(c for c in typed.upper() if c not in " -\t")
    if len(letters) != USER_CODE_LENGTH or any(c not in ALPHABET for c in letters):
        return None
    return format_user_code(letters)


def new_device_code() -> str:
    return secrets.token_urlsafe(DEVICE_CODE_BYTES)


def codes_equal(a: str, b: str) -> bool:
    """Constant-time comparison (the lookup is by hash; this guards any direct comparison)."""
    return hmac.compare_digest(a.encode("utf-8"), b.encode("utf-8"))


def expires_at(created: datetime, lifetime: int) -> datetime:
    return created + timedelta(seconds=lifetime)


@dataclass(frozen=True)
class Pending:
    """What a poll is judged on: one device authorization's state."""
    expires_at: datetime
    interval: int                        # seconds the client must wait between polls
    last_poll_at: Optional[datetime] = None
    approved: bool = False
    denied: bool = False
    consumed: bool = False


@dataclass(frozen=True)
class Verdict:
    code: str        # one of the constants above
    interval: int    # the interval from now on (grown by SLOW_DOWN)


def poll_verdict(state: Pending, now: datetime) -> Verdict:
    """The answer to one poll at ``now`` (the caller records ``now`` as the last poll and
    stores the returned interval).  Order matters: an expired or used code is over whatever
    else is true; a refusal is final; a too-early poll is told so even when approved, so a
    client that ignores the interval never gets a token sooner than one that honours it."""
    if state.consumed or now >= state.expires_at:
        return Verdict(EXPIRED, state.interval)
    if state.denied:
        return Verdict(DENIED, state.interval)
    if state.last_poll_at is not None and (now - state.last_poll_at).total_seconds() < state.interval:
        return Verdict(SLOW_DOWN, state.interval + SLOW_DOWN_STEP)
    if state.approved:
        return Verdict(APPROVED, state.interval)
    return Verdict(PENDING, state.interval)


def approvable(state: Pending, now: datetime) -> bool:
    """Can the /device page still approve or deny it (live, and nobody decided yet)?"""
    return not (state.consumed or state.approved or state.denied) and now < state.expires_at


def client_next_interval(interval: float, code: str) -> float:
    """The client's side of slow_down: wait ``SLOW_DOWN_STEP`` seconds longer from now on."""
    return interval + SLOW_DOWN_STEP if code == SLOW_DOWN else interval


def clean_client_name(value: object, max_length: int) -> Optional[str]:
    """The machine's name as the dashboard shows it, or None when unusable (not text, empty,
    control characters, longer than ``max_length``)."""
    if not isinstance(value, str):
        return None
    name = " ".join(value.split())
    if not name or len(name) > max_length or any(ord(c) < 32 or ord(c) == 127 for c in name):
        return None
    return name


def token_name(client_name: str) -> str:
    """The API token an approval creates is named after the machine (the dashboard lists it)."""
    return f"intunnel login on {client_name}"
