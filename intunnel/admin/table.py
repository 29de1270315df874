"""Human output for listings: an aligned plain-text table (pure, no I/O)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Iterable, Sequence

from ..timeutil import iso

GAP = "  "


def cell(value: Any) -> str:
    """How one value reads in a table: '-' for nothing, yes/no, ISO times, one line."""
    if value is None or value == "":
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, datetime):
        return iso(value)
    text = str(value)
    # A value must never break the table (or smuggle terminal escapes).
    return "".join(c if c.isprintable() else "?" for c in text)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def format_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """Columns padded to their widest cell; numeric columns right-aligned.

    Returns the header line alone when there are no rows.
    """
    rows = [list(r) for r in rows]
    for r in rows:
        if len(r) != len(headers):
            raise ValueError(f"row has {len(r)} cells, table has {len(headers)} columns")
    texts = [[cell(v) for v in r] for r in rows]
    widths = [max([len(h)] + [len(t[i]) for t in texts]) for i, h in enumerate(headers)]
    numeric = [bool(rows) and all(_is_number(r[i]) or r[i] is None for r in rows)
               for i in range(len(headers))]

    def line(values: Sequence[str]) -> str:
        parts = [v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric)]
        return GAP.join(parts).rstrip()

    return "\n".join([line(list(headers))] + [line(t) for t in texts])


def format_pairs(pairs: Sequence[tuple[str, Any]]) -> str:
    """A 'show' view: one 'key: value' per line, keys aligned."""
    width = max((len(k) for k, _ in pairs), default=0)
    return "\n".join(f"{(k + ':').ljust(width + 1)} {cell(v)}" for k, v in pairs)
