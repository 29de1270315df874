"""A separate process inserting rows into a database as fast as it can, one commit each.

usage: writer.py DB STOP_FILE MAX_SECONDS     prints the number of rows committed.
Stops when STOP_FILE appears or after MAX_SECONDS (a bound, never the normal end).
"""

import os
import sqlite3
import sys
import time


def main() -> None:
    db, stop_file, max_seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
    conn = sqlite3.connect(db, timeout=30, isolation_level=None)  # autocommit: one transaction per row
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("CREATE TABLE IF NOT EXISTS writer_rows (n INTEGER PRIMARY KEY, payload TEXT NOT NULL)")
    deadline = time.monotonic() + max_seconds
    n = 0
    while time.monotonic() < deadline:
        if n % 200 == 0 and os.path.exists(stop_file):
            break
        n += 1
        conn.execute("INSERT INTO writer_rows (n, payload) VALUES (?, ?)", (n, "x" * 200))
    conn.close()
    print(n)


if __name__ == "__main__":
    main()
