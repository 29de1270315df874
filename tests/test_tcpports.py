"""TCP tunnels' port range and allocation (intunnel.tcpports): table-driven rows, then properties."""

from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from intunnel import tcpports
from intunnel.errors import ConfigError


@pytest.mark.parametrize("spec, expected", [
    ("", ()),
    ("   ", ()),
    ("20000-20999", ((20000, 20999),)),
    ("20000", ((20000, 20000),)),
    (" 20000 - 20002 , 30000 ", ((20000, 20002), (30000, 30000))),
    ("30000,20000-20001", ((20000, 20001), (30000, 30000))),          # sorted
    ("20000-20010,20005-20020", ((20000, 20020),)),                   # overlapping: merged
    ("20000-20001,20002-20003", ((20000, 20003),)),                   # adjacent: merged
    ("1024-1025", ((1024, 1025),)),
    ("65535", ((65535, 65535),)),
])
def test_parse_ranges(spec, expected):
    assert tcpports.parse_ranges(spec) == expected


@pytest.mark.parametrize("spec, says", [
    ("22", "1024"),                 # below 1024: never
    ("1000-2000", "1024"),          # reaching below it: refused, not cut
    ("65000-65536", "65535"),
    ("20010-20000", "ends below"),
    ("abc", "expected"),
    ("20000-", "expected"),
    ("-5", "expected"),
    ("２００００", "expected"),      # non-ASCII digits
])
def test_parse_ranges_refuses(spec, says):
    with pytest.raises(ConfigError) as e:
        tcpports.parse_ranges(spec)
    assert "relay_tcp_ports" in str(e.value) and says in str(e.value)


R = ((20000, 20002), (30000, 30000))


@pytest.mark.parametrize("ranges, taken, requested, expected", [
    (R, set(), None, 20000),                  # the lowest free
    (R, {20000}, None, 20001),
    (R, {20000, 20001, 20002}, None, 30000),  # into the next range
    (R, set(), 20002, 20002),                 # asked for, free
    (R, {20000}, 30000, 30000),
])
def test_allocate(ranges, taken, requested, expected):
    assert tcpports.allocate(ranges, taken, requested) == expected


@pytest.mark.parametrize("ranges, taken, requested, kind", [
    ((), set(), None, "disabled"),
    ((), set(), 20000, "disabled"),
    (R, {20000, 20001, 20002, 30000}, None, "exhausted"),
    (R, set(), 22, "outside"),
    (R, set(), 20003, "outside"),
    (R, {20001}, 20001, "taken"),
    (R, set(), "20000", "invalid"),
    (R, set(), True, "invalid"),
    (R, set(), 20000.0, "invalid"),
])
def test_allocate_refuses(ranges, taken, requested, kind):
    with pytest.raises(tcpports.PortError) as e:
        tcpports.allocate(ranges, taken, requested)
    assert e.value.kind == kind and e.value.message


ranges_st = st.lists(st.tuples(st.integers(0, 70000), st.integers(0, 50)), max_size=4).map(
    lambda pairs: ",".join(f"{lo}-{lo + n}" for lo, n in pairs))


@given(ranges_st, st.sets(st.integers(0, 70000), max_size=60), st.one_of(st.none(), st.integers(-5, 70000)))
def test_allocation_properties(spec, taken, requested):
    try:
        ranges = tcpports.parse_ranges(spec)
    except ConfigError:
        return
    assert all(tcpports.MIN_PORT <= lo <= hi <= tcpports.MAX_PORT for lo, hi in ranges)
    assert all(a[1] + 1 < b[0] for a, b in zip(ranges, ranges[1:]))   # sorted, disjoint, merged
    try:
        port = tcpports.allocate(ranges, taken, requested)
    except tcpports.PortError as e:
        free = [p for lo, hi in ranges for p in range(lo, hi + 1) if p not in taken]
        if e.kind == "exhausted":
            assert requested is None and not free
        elif e.kind == "disabled":
            assert not ranges
        else:
            assert requested is not None and (not tcpports.contains(ranges, requested) or requested in taken)
        return
    # Never below 1024, always in the range, never one already held, the lowest when none was asked.
    assert port >= tcpports.MIN_PORT and tcpports.contains(ranges, port) and port not in taken
    if requested is None:
        assert all(p in taken for lo, hi in ranges for p in range(lo, hi + 1) if p < port)
    else:
        assert port == requested


@given(st.sets(st.integers(20000, 20009), max_size=10))
def test_allocating_until_full_hands_out_each_port_once(start):
    ranges, taken, got = ((20000, 20009),), set(start), []
    for _ in range(20):
        try:
            got.append(tcpports.allocate(ranges, taken))
        except tcpports.PortError as e:
            assert e.kind == "exhausted"
            break
        taken.add(got[-1])
    assert len(got) == len(set(got)) == 10 - len(start) and taken == set(range(20000, 20010))


def test_a_bad_range_fails_at_start_naming_the_setting():
    from intunnel.settings import load_settings
    with pytest.raises(ConfigError, match="relay_tcp_ports"):
        load_settings(env={"INTUNNEL_CONFIG": "", "INTUNNEL_RELAY_TCP_PORTS": "80-90"})
    assert load_settings(env={"INTUNNEL_CONFIG": "", "INTUNNEL_RELAY_TCP_PORTS": ""}).relay_tcp_ports == ""
