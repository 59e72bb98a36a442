"""The overload benchmark's own logic (bench/overload.py): how it judges what it measured.

The part itself runs in the benchmark's smoke mode (tests/test_bench_smoke.py); these check,
without a daemon, that its texts are what issue 14 describes and that a gap, a lost event or a
slow signal cannot pass unnoticed.
"""

from __future__ import annotations

import json
import unicodedata

from bench.overload import (
    GAP_LIMIT_S,
    SMOKE,
    OverloadResult,
    Scenario,
    combining_marks,
    largest_gap,
    many_short_lines,
    markdown,
    to_json,
)


def test_the_long_texts_fit_the_payload_limit_and_are_what_the_issue_describes() -> None:
    lines, marks = many_short_lines(), combining_marks()
    for text in (lines, marks):
        assert 15_000 < len(text.encode()) <= 16_384  # mqtt.max_payload_bytes
        assert not text.startswith("{")  # plain text: a `normal` announcement
    assert lines.count("\n") > 700
    assert sum(unicodedata.combining(c) > 0 for c in marks) > 5_000


def test_a_gap_counts_from_the_ping_before_ready_and_up_to_the_end() -> None:
    pings = [9.8, 11.0, 12.0, 19.0]
    assert largest_gap(pings, since=10.0, until=20.0) == 7.0
    assert largest_gap(pings, since=10.0, until=30.0) == 11.0  # pings stopped: the gap grows
    assert largest_gap([], since=10.0, until=12.5) == 2.5


def passing(**changes: object) -> Scenario:
    scenario = Scenario("s", "what", peak_rss_kib=60 * 1024, watchdog_gap_s=1.0)
    for name, value in changes.items():
        setattr(scenario, name, value)
    return scenario


def test_every_mark_of_issue_14_fails_a_scenario() -> None:
    assert passing().failures() == []
    assert passing(missing=1).failures() == ["1 dropped"]
    assert passing(extra=2).failures() == ["2 dropped"]
    assert passing(queue_full_lines=3).failures() == ["3 publishes refused"]
    assert passing(watchdog_gap_s=GAP_LIMIT_S + 0.1).failures() == ["watchdog gap"]
    assert passing(watchdog_gap_s=None).failures() == ["watchdog gap"]
    assert passing(signal="SIGHUP", noticed_s=1.5).failures() == ["SIGHUP not acted on within 1 s"]
    lost = passing(signal="SIGTERM", noticed_s=None, exit_s=None).failures()
    assert lost == ["SIGTERM not acted on within 1 s", "did not exit"]
    assert passing(signal="SIGTERM", noticed_s=0.1, exit_s=6.0).failures() == ["exit over 5 s"]
    assert passing(peak_rss_kib=564 * 1024).failures() == ["RSS over 128 MiB"]


def test_the_report_and_the_json_carry_every_scenario_and_verdict() -> None:
    result = OverloadResult(SMOKE, "2026-01-01 00:00 UTC")
    result.scenarios = [passing(), passing(name="flood", missing=5, peak_tree_kib=300 * 1024)]
    data = json.loads(to_json(result))
    assert [s["passed"] for s in data["scenarios"]] == [True, False]
    assert data["passed"] is False
    assert data["scenarios"][1]["dropped"] == 5
    assert data["memory_max_mib"] == 384  # 300 MiB and a quarter more, in 32 MiB steps
    text = "\n".join(markdown(result))
    assert "| s: what | 60 (—) |" in text
    assert "**FAIL**: 5 dropped" in text
    assert "`MemoryMax=384M`" in text
