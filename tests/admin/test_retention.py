"""Retention: which backups survive (pure), and the CLI applying it over a simulated month."""

from datetime import datetime

import pytest

from intunnel.admin import retention
from intunnel.admin.cli import main

JAN = [datetime(2026, 1, d, 3, 0) for d in range(1, 32)]  # 2026-01-01 is a Thursday


def day(d: int, hour: int = 3) -> datetime:
    return datetime(2026, 1, d, hour, 0)


def test_names_round_trip():
    when = datetime(2026, 1, 31, 3, 4, 5)
    assert retention.backup_name(when) == "intunnel-20260131T030405Z.db.gz"
    assert retention.config_name(when) == "intunnel-20260131T030405Z.config.tar.gz"
    assert retention.parse_backup_name("intunnel-20260131T030405Z.db.gz") == when
    for other in ("intunnel-20260131T030405Z.db", "intunnel-latest.db.gz", "x-20260131T030405Z.db.gz",
                  "intunnel-20261331T030405Z.db.gz", ".intunnel-20260131T030405Z.db.gz.tmp-1"):
        assert retention.parse_backup_name(other) is None


def test_month_of_daily_runs_keeps_7_daily_and_4_weekly():
    """Apply retention after each daily run, as cron would, and check what is left."""
    kept: set[datetime] = set()
    after = {}
    for when in JAN:
        kept = retention.select_keep(kept | {when}, keep_daily=7, keep_weekly=4)
        after[when.day] = kept
    # Day 10: the 7 newest days (4..10); the newest of ISO weeks 2 (10th) and 1 (4th) are among them.
    assert after[10] == {day(d) for d in range(4, 11)}
    # Day 31: days 25..31, plus the newest of ISO weeks 3 (Sun 18th) and 2 (Sun 11th);
    # week 5's newest is the 31st and week 4's is the 25th, already kept as dailies.
    assert after[31] == {day(d) for d in (11, 18, 25, 26, 27, 28, 29, 30, 31)}


def test_newest_of_each_day_and_week():
    runs = [day(5, 1), day(5, 2), day(5, 23), day(6, 1), day(6, 9)]
    assert retention.select_keep(runs, 1, 0) == {day(6, 9)}
    assert retention.select_keep(runs, 2, 0) == {day(6, 9), day(5, 23)}
    # the 5th (Mon) and 6th are both in ISO week 2
    assert retention.select_keep(runs, 0, 1) == {day(6, 9)}


def test_gaps_count_days_with_backups_not_calendar_days():
    runs = [day(1), day(2), day(20), day(21)]  # cron was broken for 17 days
    assert retention.select_keep(runs, 3, 0) == {day(2), day(20), day(21)}


def test_zero_keeps_only_the_newest_and_empty_keeps_nothing():
    assert retention.select_keep(JAN, 0, 0) == {day(31)}
    assert retention.select_keep([], 7, 4) == set()
    with pytest.raises(ValueError):
        retention.select_keep(JAN, -1, 4)


@pytest.mark.sqlite_only("SQLite backup names; pg_dump ones: test_pg_backup.py")
def test_cli_applies_retention_over_a_month(installed, capsys, in_process):
    """31 daily runs of the real command with an injected clock (in-process: no sleeping, fast)."""
    backups = installed.backup_dir
    backups.mkdir(parents=True)
    (backups / "notes.txt").write_text("operator's file: never touched")
    (backups / "intunnel-latest.db.gz").write_text("not a backup name: never touched")
    config = str(installed.config)
    for when in JAN:
        args = ["--config", config, "backup", "--now", when.strftime("%Y-%m-%dT%H:%M:%SZ")]
        if when.day % 2:
            args.append("--include-config")
        assert main(args) == 0
        if when.day == 10:
            assert sorted(p.name for p in backups.glob("*.db.gz") if p.name != "intunnel-latest.db.gz") == [
                retention.backup_name(day(d)) for d in range(4, 11)]
    expected_days = (11, 18, 25, 26, 27, 28, 29, 30, 31)
    expected = {retention.backup_name(day(d)) for d in expected_days}
    expected |= {retention.config_name(day(d)) for d in expected_days if d % 2}
    expected |= {"notes.txt", "intunnel-latest.db.gz"}
    assert {p.name for p in backups.iterdir()} == expected
    assert capsys.readouterr().out == ""  # silent on success


@pytest.mark.sqlite_only("SQLite backup names; pg_dump ones: test_pg_backup.py")
def test_cli_retention_options_and_settings(installed):
    """One real subprocess: --keep-* win over the settings, which give the defaults."""
    for d in (1, 2, 3):
        installed.ok("backup", "--now", f"2026-01-0{d}T03:00:00Z")
    installed.ok("backup", "--now", "2026-01-04T03:00:00Z", "--keep-daily", "2", "--keep-weekly", "0")
    assert [b["file"] for b in installed.json("backup", "list")["backups"]] == [
        "intunnel-20260104T030000Z.db.gz", "intunnel-20260103T030000Z.db.gz"]
    r = installed.run("backup", "--now", "2026-01-05T03:00:00Z", env={"INTUNNEL_BACKUP_KEEP_DAILY": "1",
                                                                      "INTUNNEL_BACKUP_KEEP_WEEKLY": "0"})
    assert r.returncode == 0, r.stderr
    assert [b["file"] for b in installed.json("backup", "list")["backups"]] == ["intunnel-20260105T030000Z.db.gz"]
