"""The benchmark cannot rot: its smoke mode runs every part briefly and writes a full report.

No timing is judged here (the benchmark is not a test); only that each part produced figures.
Each part runs alone (`--parts <name>`), as a test of its own, so that pytest-xdist spreads them
over its workers. Every part runs in a temporary directory of its own with its own mosquitto,
PulseAudio (a socket in that directory), MPD and snapserver (on free ports): two parts at once
on different workers share nothing.

A run with `--parts` still writes the whole RESULTS.md (the machine table, every section, the
ones not run saying "No figures") and results.png (parts 1 to 3 plotted, the others' panels
"not run"); sound.png only when part 6 runs. A new part: one entry in PARTS, with its checks.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support import REPO

NUMBER_CELL = re.compile(r"\|\s*\**-?\d+(\.\d+)?\**( / -?\d+(\.\d+)?)*( ms| MiB)?\s*\|")
PNG = b"\x89PNG\r\n\x1a\n"
STOP_S = 40  # of a part's timeout: for the benchmark to stop what it started, once told to


@dataclass(frozen=True)
class Report:
    """What one `bench.run --smoke --parts <name>` wrote."""

    out: Path
    text: str  # RESULTS.md

    def section(self, heading: str) -> str:
        assert heading in self.text, heading
        return self.text.split(heading, 1)[1].split("\n## ", 1)[0]


def run_smoke(part: str, out: Path, timeout: float) -> Report:
    """The benchmark in smoke mode, this part alone; on a timeout it is stopped with SIGTERM,
    which ends it through its `finally`s (its mosquitto, PulseAudio and daemons stopped too)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "bench.run", "--smoke", "--parts", part, "--out", str(out)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.terminate()
        try:
            _, stderr = process.communicate(timeout=STOP_S - 10)
        except subprocess.TimeoutExpired:
            process.kill()
            _, stderr = process.communicate()
        pytest.fail(f"part {part} ran over {timeout:.0f} s:\n{stderr[-4000:]}")
    assert process.returncode == 0, stderr[-4000:]
    return Report(out, (out / "RESULTS.md").read_text())


# --- what every run writes ---------------------------------------------------------------------


def check_whole_report(report: Report) -> None:
    assert "smoke mode" in report.text
    for heading in ("| CPU |", "| kernel |", "| Python |", "| mosquitto |", "| websockets |"):
        assert heading in report.text


def check_plot(report: Report, plot: str) -> None:
    assert (report.out / plot).read_bytes()[:8] == PNG
    assert f"({plot})" in report.text


def check_figures(section: str) -> None:
    assert "No figures" not in section, section
    assert NUMBER_CELL.search(section), section


# --- each part's own checks, on its section of RESULTS.md ---------------------------------------


def check_ttfa(report: Report, ttfa: str) -> None:
    for row in ("Herald, warm socket", "cold-connect client", "Herald with its chime"):
        line = next(line for line in ttfa.splitlines() if line.startswith(f"| {row}"))
        assert re.match(r"\| [^|]+ \| [1-9]\d* \| \d+\.\d \|", line), line
    cached = next(line for line in ttfa.splitlines() if line.startswith("| Herald, cached phrase"))
    assert "not available: no phrase cache in this build" in cached or re.search(
        r"\| [1-9]\d* \| \d+\.\d \|", cached
    )


def check_rotation(report: Report, rotation: str) -> None:
    assert re.search(r"waited for a handshake\*\* \| \*\*\d+\*\*", rotation)


def check_overload(report: Report, overload: str) -> None:
    assert "the scenario broke" not in report.text  # each overload scenario ran to its figures


def check_sound(report: Report, sound: str) -> None:
    for heading in ("### Loudness as heard", "### A preemption cut", "### The tail"):
        assert heading in sound, sound
    for source in ("| espeak-ng |", "| Deepgram |", "| cached phrase |", "| chime alarm |"):
        line = next(line for line in sound.splitlines() if line.startswith(source))
        assert re.search(r"\| -\d+\.\d\d( / -\d+\.\d\d)? \| -\d+\.\d\d \|$", line), line
    verdicts = re.findall(r"\| \*\*(PASS|FAIL)\*\* \|", sound)
    assert len(verdicts) >= 3, sound  # a verdict per target, whichever it is
    assert re.search(r"largest step at the cut, as recorded \| [1-9]\d* \| \d+ \|", sound), sound
    assert re.search(r"\| 150 ms \(default\) \| [1-9]\d* \| \d+\.\d % \|", sound), sound


def check_ducking(report: Report, ducking: str) -> None:
    for backend in ("MPD", "PulseAudio", "Snapcast"):
        for measure in (r"\*\*publish → down\*\*", r"\*\*last sound → back\*\*"):
            row = rf"\| {backend} \| {measure} \| [1-9]\d* \| \d+\.\d \| \d+\.\d \| \d+\.\d \|"
            assert re.search(row, ducking), ducking
    assert "What bounds them" in ducking, ducking


def check_rooms(report: Report, rooms: str) -> None:
    for label in ("2", "4", "2, no chime"):
        for sync in ("on", r"off \(today\)"):
            for measure in (r"\*\*onset spread\*\*", "publish → first sound"):
                row = (
                    rf"\| {label} \| {sync} \| {measure} \| [1-9]\d* \| -?\d+\.\d "
                    r"\| -?\d+\.\d \| -?\d+\.\d \|"
                )
                assert re.search(row, rooms), rooms
    verdicts = re.findall(
        r"\| onset spread with sync, [24] rooms(?:, no chime)?, p95 \| \d+\.\d ms \| ≤ 5 ms "
        r"\| \*\*(PASS|FAIL)\*\* \|",
        rooms,
    )
    assert len(verdicts) == 3, rooms  # a verdict per group, whichever it is
    assert re.search(r"with one `sync_at` in \d+ of [1-9]\d* announcements", rooms), rooms
    assert "What bounds them" in rooms and "The error budget across hosts on a LAN" in rooms


def check_esphome(report: Report, esphome: str) -> None:
    row = r"\| \*\*command → first sound\*\* \| [1-9]\d* \| \d+\.\d \| \d+\.\d \| \d+\.\d \|"
    assert re.search(row, esphome), esphome
    assert "Problems:" not in esphome, esphome


def nothing_more(report: Report, section: str) -> None:
    """A part whose figures are all the section has to show."""


@dataclass(frozen=True)
class Part:
    name: str  # as `bench.run --parts` takes it (bench/run.py's ALL_PARTS)
    heading: str  # its section of RESULTS.md
    timeout_s: int  # the test's; about 4x the part's smoke run on an idle 2-core machine
    check: Callable[[Report, str], None] = nothing_more  # given the report and the section
    plots: tuple[str, ...] = ()  # written only when this part runs


PLOTS = ("results.png",)  # written by every run, whichever parts it ran
PARTS = (
    Part("ttfa", "## 1. Time to first audio", 90, check_ttfa),
    Part("preempt", "## 2. Preemption", 120),
    Part("rotation", "## 3. Rotation", 90, check_rotation),
    Part("footprint", "## 4. Footprint", 90),
    Part("sound", "## 6. Sound", 120, check_sound, plots=("sound.png",)),
    Part("ducking", "## 7. Ducking", 150, check_ducking),
    Part("rooms", "## 8. Rooms in sync", 150, check_rooms),
    Part("esphome", "## 9. Home Assistant media player (ESPHome API)", 60, check_esphome),
    Part("overload", "## 5. Overload", 180, check_overload),
)


@pytest.mark.parametrize(
    "part", [pytest.param(p, id=p.name, marks=pytest.mark.timeout(p.timeout_s)) for p in PARTS]
)
def test_the_benchmark_in_smoke_mode_writes_the_part_and_a_plot(part: Part, tmp_path: Path) -> None:
    report = run_smoke(part.name, tmp_path, part.timeout_s - STOP_S)
    check_whole_report(report)
    section = report.section(part.heading)
    check_figures(section)
    part.check(report, section)
    for plot in (*PLOTS, *part.plots):
        check_plot(report, plot)


def test_every_part_of_the_benchmark_is_run_here() -> None:
    """A part added to bench/run.py needs its entry in PARTS (its heading, checks, timeout)."""
    from bench.run import ALL_PARTS

    here = {p.name for p in PARTS}
    assert here == set(ALL_PARTS), (
        f"parts without an entry in PARTS: {sorted(set(ALL_PARTS) - here)}; "
        f"entries for parts bench.run does not have: {sorted(here - set(ALL_PARTS))}"
    )
