"""The dashboard's traffic view in the database: ``traffic_entry`` rows, written by the relays
(relay/traffic), read and cleared by the web app (web/api).  Metadata only: method, path without
its query string, status, duration, bytes, visitor address, time."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import peewee as pw

from .models import TrafficEntry

COLUMNS = ("tunnel_id", "at_ms", "method", "path", "status", "duration_ms", "request_bytes", "response_bytes",
           "visitor")


# Rows per INSERT: 10 parameters a row stays under SQLite's oldest variable limit (999).
BATCH = 90
_SELECTED = ", ".join(f"incoming.{c}" for c in COLUMNS)


def write(db: pw.Database, rows: list[tuple], keep: int) -> None:
    """Insert ``rows`` (tuples in COLUMNS' order) of the tunnels whose view is on, one INSERT per
    BATCH rows (the view's state read in the same statement: a row recorded before the owner
    turned the view off never lands after the delete that came with it), then keep the newest
    ``keep`` rows of each tunnel written, in one DELETE.  Plain SQL: the relay runs this every
    relay_traffic_flush seconds, and peewee's query building costs more than the database's work."""
    p = db.param
    one = "(" + ", ".join([p] * (len(COLUMNS) + 1)) + ")"
    # On PostgreSQL the tunnel rows shared-locked: an owner turning the view off (UPDATE, then
    # DELETE of the rows, one transaction) either waits for this insert or is seen by it.
    lock = " FOR SHARE OF tunnel" if isinstance(db, pw.PostgresqlDatabase) else ""
    with db.atomic():
        for i in range(0, len(rows), BATCH):
            batch = rows[i:i + BATCH]
            # (n: the rows' order, which the ids follow: a join need not keep it)
            db.execute_sql(
                f"INSERT INTO traffic_entry ({', '.join(COLUMNS)}) WITH incoming (n, {', '.join(COLUMNS)}) AS "
                f"(VALUES {', '.join([one] * len(batch))}) SELECT {_SELECTED} FROM incoming JOIN tunnel ON "
                f"tunnel.id = incoming.tunnel_id WHERE tunnel.traffic_view ORDER BY incoming.n{lock}",
                [v for n, row in enumerate(batch) for v in (n, *row)])
        prune(db, sorted({r[0] for r in rows}), keep)


def prune(db: pw.Database, tunnel_ids: list[int], keep: int) -> None:
    p = db.param
    db.execute_sql(
        "DELETE FROM traffic_entry WHERE id IN (SELECT id FROM (SELECT id, ROW_NUMBER() OVER (PARTITION BY "
        f"tunnel_id ORDER BY id DESC) AS place FROM traffic_entry WHERE tunnel_id IN ({', '.join([p] * len(tunnel_ids))})"
        f") ranked WHERE place > {p})", [*tunnel_ids, int(keep)])


def clear(tunnel_id: int) -> int:
    return TrafficEntry.delete().where(TrafficEntry.tunnel == tunnel_id).execute()


def recent(tunnel_id: int, after: int, limit: int) -> list[dict[str, Any]]:
    """The tunnel's entries newer than id ``after``, newest first, at most ``limit``."""
    query = (TrafficEntry.select(TrafficEntry.id, *[getattr(TrafficEntry, c) for c in COLUMNS[1:]])
             .where((TrafficEntry.tunnel == tunnel_id) & (TrafficEntry.id > after))
             .order_by(TrafficEntry.id.desc()).limit(limit).tuples())
    return [view(row) for row in query]


def view(row: tuple) -> dict[str, Any]:
    ident, at_ms, method, path, status, duration_ms, sent, received, visitor = row
    at = datetime.fromtimestamp(at_ms / 1000, tz=timezone.utc)
    return {"id": ident, "time": at.strftime("%Y-%m-%dT%H:%M:%S.") + f"{at_ms % 1000:03d}Z", "method": method,
            "path": path, "status": status, "duration_ms": duration_ms, "request_bytes": sent,
            "response_bytes": received, "visitor": visitor}
