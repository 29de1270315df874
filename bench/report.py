"""Pure presentation of bench results: the figures, the ratio table, the targets.

``results`` maps a target name to ``{figure key: value}``; a missing figure
is "n/a" (e.g. nginx-hop has no agent, ssh has no automatic restart).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Figure:
    key: str
    label: str
    unit: str
    higher_is_better: bool
    fmt: str = "{:,.0f}"


FIGURES = (
    Figure("ka_rps", "keep-alive 1 KiB GET, 32 conns", "req/s", True),
    Figure("ka_p50", "keep-alive p50", "ms", False, "{:.2f}"),
    Figure("ka_p99", "keep-alive p99", "ms", False, "{:.2f}"),
    Figure("close_rps", "new connection per request", "req/s", True),
    Figure("close_p50", "new connection p50", "ms", False, "{:.2f}"),
    Figure("close_p99", "new connection p99", "ms", False, "{:.2f}"),
    Figure("route_p50_ms", "relay route latency p50, new connections", "ms", False, "{:.3f}"),
    Figure("route_p99_ms", "relay route latency p99, new connections", "ms", False, "{:.3f}"),
    Figure("down_mbs", "64 MiB download", "MB/s", True),
    Figure("up_mbs", "64 MiB upload", "MB/s", True),
    Figure("relay_us_ka", "relay/server CPU per keep-alive request", "us", False),
    Figure("client_us_ka", "client CPU per keep-alive request", "us", False),
    Figure("relay_us_close", "relay/server CPU per new-connection request", "us", False),
    Figure("client_us_close", "client CPU per new-connection request", "us", False),
    Figure("front_us_ka", "front nginx (TLS) CPU per keep-alive request", "us", False),
    Figure("app_us_ka", "local app CPU per keep-alive request", "us", False),
    Figure("wrk_us_ka", "load generator (wrk) CPU per keep-alive request", "us", False),
    Figure("total_us_ka", "all of the above, per keep-alive request", "us", False),
    Figure("relay_rss", "idle RSS, relay/server side", "MiB", False, "{:.1f}"),
    Figure("client_rss", "idle RSS, client side", "MiB", False, "{:.1f}"),
    Figure("kib_per_agent", "relay memory per idle agent", "KiB", False, "{:.1f}"),
    Figure("restart_s", "relay restart to serving", "s", False, "{:.2f}"),
)

TARGET_ORDER = ("direct", "nginx-hop", "ssh-R -N", "ssh-R -tt", "python-2hop", "intunnel", "intunnel-no-inspect",
                "intunnel-nginx", "intunnel-tcp")
SSH_BASELINE = "ssh-R -tt"  # the usable ssh -R (Nagle off); the "ratio to ssh-R" column


def best_of(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
    """Figure by figure, the better of two measurements of the same target."""
    best = {}
    for fig in FIGURES:
        values = [v for v in (a.get(fig.key), b.get(fig.key)) if v is not None]
        if values:
            best[fig.key] = max(values) if fig.higher_is_better else min(values)
    return best


def direct_base(results, target: str, key: str):
    """The `direct` value a target's figure is compared with: the run paired with it, if any."""
    paired = results.get(target, {}).get("paired_direct", {})
    if key in paired:
        return paired[key]
    return results.get("direct", {}).get(key)


def ratio(value, base):
    if value is None or base in (None, 0):
        return None
    return value / base


def _cell(fig: Figure, value, base_direct, base_ssh) -> str:
    if value is None:
        return "n/a"
    text = fig.fmt.format(value)
    parts = []
    for base in (base_direct, base_ssh):
        r = ratio(value, base)
        parts.append("-" if r is None else f"{r:.2f}")
    return f"{text} ({parts[0]} / {parts[1]})"


def table(results: dict[str, dict[str, float]]) -> str:
    """A Markdown table: one row per figure, one column per target; cells 'value (x direct / x ssh-R)'."""
    targets = [t for t in TARGET_ORDER if t in results] + [t for t in results if t not in TARGET_ORDER]
    ssh = results.get(SSH_BASELINE, {})
    lines = ["| figure | unit | " + " | ".join(targets) + " |",
             "|---|---|" + "---|" * len(targets)]
    for fig in FIGURES:
        cells = [_cell(fig, results[t].get(fig.key), direct_base(results, t, fig.key), ssh.get(fig.key))
                 for t in targets]
        lines.append(f"| {fig.label} | {fig.unit} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


@dataclass(frozen=True)
class Target:
    text: str
    target: str  # which bench target the goal is about
    check: object  # callable(results) -> float | None (the measured quantity)
    limit: float
    at_least: bool  # True: measured >= limit; False: measured <= limit


def _rel(target, key):
    return lambda r: ratio(r.get(target, {}).get(key), direct_base(r, target, key))


def _abs(target, key):
    return lambda r: r.get(target, {}).get(key)


def _between(target, other, key):
    """target's figure as a ratio to other's (e.g. the inspector on against --no-inspect)."""
    return lambda r: ratio(r.get(target, {}).get(key), r.get(other, {}).get(key))


def _sum(target, *keys):
    def get(r):
        values = [r.get(target, {}).get(k) for k in keys]
        return None if None in values else sum(values)
    return get


# The targets for `intunnel` (embedded relay) and `intunnel-nginx`.
TARGETS = (
    Target("keep-alive req/s >= 0.25x direct", "intunnel", _rel("intunnel", "ka_rps"), 0.25, True),
    Target("keep-alive p99 <= 4x direct", "intunnel", _rel("intunnel", "ka_p99"), 4.0, False),
    Target("new-connection req/s >= 0.20x direct", "intunnel", _rel("intunnel", "close_rps"), 0.20, True),
    Target("64 MiB download >= 0.35x direct", "intunnel", _rel("intunnel", "down_mbs"), 0.35, True),
    Target("64 MiB upload >= 0.35x direct", "intunnel", _rel("intunnel", "up_mbs"), 0.35, True),
    Target("relay + client idle RSS <= 60 MiB", "intunnel", _sum("intunnel", "relay_rss", "client_rss"), 60, False),
    Target("relay memory per idle agent <= 64 KiB", "intunnel", _abs("intunnel", "kib_per_agent"), 64, False),
    Target("serving again <= 3 s after a relay restart", "intunnel", _abs("intunnel", "restart_s"), 3.0, False),
    # Issue 15: the inspector (on by default) costs at most 25 % of keep-alive throughput.
    Target("inspector on: keep-alive req/s >= 0.75x --no-inspect", "intunnel",
           _between("intunnel", "intunnel-no-inspect", "ka_rps"), 0.75, True),
    Target("inspector on: new-connection req/s >= 0.75x --no-inspect", "intunnel",
           _between("intunnel", "intunnel-no-inspect", "close_rps"), 0.75, True),
    Target("intunnel-nginx keep-alive req/s >= 0.20x direct", "intunnel-nginx",
           _rel("intunnel-nginx", "ka_rps"), 0.20, True),
    # Where we are heading: beat the best peer (bore / ssh -tt) on small requests.
    Target("stretch: keep-alive req/s > 0.5x direct", "intunnel", _rel("intunnel", "ka_rps"), 0.5, True),
    Target("stretch: new-connection req/s > 0.3x direct", "intunnel", _rel("intunnel", "close_rps"), 0.3, True),
)


def targets_report(results: dict[str, dict[str, float]]) -> str:
    """A Markdown list: each target, the measured value, met / not met / not measured."""
    lines = []
    for t in TARGETS:
        value = t.check(results)
        if value is None:
            verdict, shown = "not measured", "n/a"
        else:
            ok = value >= t.limit if t.at_least else value <= t.limit
            verdict, shown = ("met" if ok else "NOT met"), f"{value:.2f}"
        lines.append(f"- {t.text}: {shown} -> **{verdict}**")
    return "\n".join(lines)


# A section another bench keeps in the results file: "## Heading", a blank line, then
# everything between <!-- name --> and <!-- /name -->.  bench.tunnel rewrites the file
# around them; each bench replaces only its own.
MARKED_SECTION = re.compile(r"## [^\n]+\n\n<!-- ([\w-]+) -->.*?<!-- /\1 -->\n", re.S)


def marked_sections(text: str) -> list[str]:
    """Every marked section of a results file, in order."""
    return [m.group(0) for m in MARKED_SECTION.finditer(text)]


def write_section(path: Path, heading: str, marker: str, section: str) -> None:
    """Replace (or append) one marked section of the results file, leaving the rest alone."""
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    pattern = re.compile(re.escape(heading) + r"\n\n<!-- " + re.escape(marker) + r" -->.*?<!-- /"
                         + re.escape(marker) + r" -->\n", re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _: section, text)
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text)
