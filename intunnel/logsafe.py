"""What may appear in a log line in place of a secret (pure, no dependencies).

Kept apart from ``security`` so the relay can use it without loading the
password-hashing libraries (a few MiB of resident memory per process).
"""

from __future__ import annotations

import logging


def redact(secret: str | None) -> str:
    """What may appear in a log line in place of a secret."""
    if not secret:
        return "-"
    return secret[:4] + "…"


class QueryParametersWithheld(logging.Filter):
    """For peewee's query log: keep the SQL, drop the parameters.

    At DEBUG peewee logs every query as ``(sql, params)``, and the parameters
    are tunnel tokens, session-id and API-token hashes, CSRF tokens, password
    hashes.  Installed on the ``peewee`` logger (``models`` does it), the filter
    rewrites each record before any handler sees it: ``<sql> [3 parameters withheld]``.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.msg
        if isinstance(msg, tuple) and len(msg) == 2 and isinstance(msg[0], str):
            record.msg = "%s [%d parameters withheld]"
            record.args = (msg[0], len(msg[1] or ()))
        return True
