"""A separate process inserting rows into a database as fast as it can, one commit each.

usage: writer.py DB STOP_FILE MAX_SECONDS     prints the number of rows committed.
DB is a SQLite file, or a postgresql:// URL (password included).
Stops when STOP_FILE appears or after MAX_SECONDS (a bound, never the normal end).

``backups_while_writing`` (imported by the tests) runs it and takes backups meanwhile.
"""

import os
import sqlite3
import subprocess
import sys
import time

CREATE = "CREATE TABLE IF NOT EXISTS writer_rows (n INTEGER PRIMARY KEY, payload TEXT NOT NULL)"


def connect(db: str):
    """(connection, parameter style) with autocommit: one transaction per row."""
    if db.startswith("postgresql://"):
        import psycopg2
        conn = psycopg2.connect(db)
        conn.autocommit = True
        return conn, "%s"
    conn = sqlite3.connect(db, timeout=30, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    return conn, "?"


def main() -> None:
    db, stop_file, max_seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
    conn, p = connect(db)
    cur = conn.cursor()
    cur.execute(CREATE)
    insert = f"INSERT INTO writer_rows (n, payload) VALUES ({p}, {p})"
    deadline = time.monotonic() + max_seconds
    n = 0
    while time.monotonic() < deadline:
        if n % 200 == 0 and os.path.exists(stop_file):
            break
        n += 1
        cur.execute(insert, (n, "x" * 200))
    conn.close()
    print(n)


def backups_while_writing(installed, db: str, committed, stop_file) -> list[tuple[str, int]]:
    """Run the writer on ``db`` and back up again and again while it commits (at least 3 times
    and 3 seconds, at most 9 runs); [(backup path, rows committed before it began)].

    ``committed()`` reads the writer's highest committed n.  Asserts the writer kept going
    during every backup and managed more than 1000 inserts/s overall.
    """
    writer = subprocess.Popen([sys.executable, __file__, db, str(stop_file), "30"], stdout=subprocess.PIPE,
                              text=True)
    started = time.monotonic()
    taken = []
    try:
        deadline = time.monotonic() + 20
        while committed() < 2000:
            assert time.monotonic() < deadline and writer.poll() is None, "writer did not get going"
            time.sleep(0.02)  # polling a condition (rows committed), with a deadline
        i = 0
        while i < 9 and (i < 3 or time.monotonic() - started < 3):
            i += 1
            before = committed()
            # Retention must not prune earlier copies: every one is restored by the test.
            result = installed.json("backup", "--keep-daily", "30", "--now", f"2030-01-0{i}T00:00:00Z")["backup"]
            assert committed() > before, "the writer must keep committing while the backup runs"
            taken.append((result["path"], before))
    finally:
        open(stop_file, "w").close()
        out, _ = writer.communicate(timeout=60)
    elapsed = time.monotonic() - started
    total = int(out)
    print(f"writer: {total} rows in {elapsed:.1f} s = {total / elapsed:.0f} inserts/s")
    assert total / elapsed > 1000
    return taken


if __name__ == "__main__":
    main()
