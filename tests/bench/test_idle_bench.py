"""bench.idle's pure part: its section of the results file (figures, a before column, targets)."""

from __future__ import annotations

from bench import idle
from bench.report import marked_sections


def figures(relay: float, per_agent: float, backs: list[float]) -> dict:
    return {"relay_rss_mib": relay, "relay_floor_mib": 22.7, "client_rss_mib": 25.5,
            "client_no_inspect_rss_mib": 25.4, "client_floor_mib": 19.3, "kib_per_agent": per_agent,
            "restarts": [{"stop_s": 0.3, "listening_s": 0.25, "serving_s": 0.4, "all_agents_s": b,
                          "relay_cpu_s": 1.5} for b in backs]}


def test_the_section_shows_medians_ranges_a_before_column_and_the_verdicts(tmp_path):
    text = idle.section(figures(36.2, 21.8, [2.0, 1.5, 3.0]), 1000, before=figures(44.3, 31.1, [2.5]))
    assert marked_sections(text) == [text]      # bench.tunnel keeps it when it rewrites the file
    assert "| relay RSS, one tunnel idle | MiB | 44.3 | 36.2 | <= 25 |" in text
    assert "| new relay: start to every agent back | s | 2.50 | 2.00 (1.50-3.00) | <= 1 |" in text
    assert "- relay memory per idle agent <= 24 KiB: 21.80 -> **met**" in text
    assert "- relay RSS, one tunnel idle <= 25 MiB: 36.20 -> **NOT met**" in text
    out = tmp_path / "RESULTS.md"
    out.write_text("# Results\n\n## Other\n\ntext\n")
    from bench.report import write_section
    write_section(out, idle.HEADING, idle.MARKER, text)
    write_section(out, idle.HEADING, idle.MARKER, idle.section(figures(30.0, 20.0, [0.9]), 1000))
    assert out.read_text().count(idle.HEADING) == 1 and "| 30.0 |" in out.read_text()


def test_without_agents_the_per_agent_and_restart_rows_are_not_applicable():
    text = idle.section({k: v for k, v in figures(36.0, 0, []).items() if k not in ("kib_per_agent", "restarts")}, 0)
    assert "| relay memory per idle agent | KiB | n/a | <= 24 |" in text
    assert "agents <=" not in text and "every agent back <= 1" not in text
