"""What may appear in a log line in place of a secret (pure, no dependencies).

Kept apart from ``security`` so the relay can use it without loading the
password-hashing libraries (a few MiB of resident memory per process).
"""

from __future__ import annotations


def redact(secret: str | None) -> str:
    """What may appear in a log line in place of a secret."""
    if not secret:
        return "-"
    return secret[:4] + "…"
