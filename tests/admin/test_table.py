"""Pure table formatting for human output."""

from datetime import datetime

import pytest

from intunnel.admin.table import cell, format_pairs, format_table


def test_columns_align_and_numbers_right_align():
    text = format_table(("ID", "NAME", "ADMIN"), [(1, "alice", True), (12, "bob", False)])
    assert text.splitlines() == [
        "ID  NAME   ADMIN",
        " 1  alice  yes",
        "12  bob    no",
    ]


def test_cells():
    assert cell(None) == "-" and cell("") == "-"
    assert cell(datetime(2026, 1, 15, 10, 30)) == "2026-01-15T10:30:00Z"
    assert cell("evil\x1b[31m\nname") == "evil?[31m?name"  # no terminal escapes, no broken lines


def test_empty_table_is_just_the_header():
    assert format_table(("ID", "NAME"), []) == "ID  NAME"


def test_row_width_mismatch_is_a_bug():
    with pytest.raises(ValueError):
        format_table(("A", "B"), [(1,)])


def test_pairs():
    assert format_pairs([("id", 1), ("last connected", None)]).splitlines() == [
        "id:             1",
        "last connected: -",
    ]
