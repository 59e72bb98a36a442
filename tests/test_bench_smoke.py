"""The benchmark cannot rot: its smoke mode runs every part briefly and writes a full report.

No timing is judged here (the benchmark is not a test); only that each part produced figures.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import REPO

PARTS = (
    "## 1. Time to first audio",
    "## 2. Preemption",
    "## 3. Rotation",
    "## 4. Footprint",
    "## 6. Sound",
    "## 7. Ducking",
)
NUMBER_CELL = re.compile(r"\|\s*\**-?\d+(\.\d+)?\**( / -?\d+(\.\d+)?)*( ms| MiB)?\s*\|")


def section(text: str, heading: str) -> str:
    return text.split(heading, 1)[1].split("\n## ", 1)[0]


@pytest.mark.timeout(240)
def test_the_benchmark_in_smoke_mode_writes_every_part_and_a_plot(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench.run", "--smoke", "--out", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=230,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]

    results = (tmp_path / "RESULTS.md").read_text()
    assert "smoke mode" in results
    for heading in ("| CPU |", "| kernel |", "| Python |", "| mosquitto |", "| websockets |"):
        assert heading in results
    for heading in PARTS:
        assert heading in results, heading
        part = section(results, heading)
        assert "No figures" not in part, part
        assert NUMBER_CELL.search(part), part
    ttfa = section(results, PARTS[0])
    for row in ("Herald, warm socket", "cold-connect client", "Herald with its chime"):
        line = next(line for line in ttfa.splitlines() if line.startswith(f"| {row}"))
        assert re.match(r"\| [^|]+ \| [1-9]\d* \| \d+\.\d \|", line), line
    cached = next(line for line in ttfa.splitlines() if line.startswith("| Herald, cached phrase"))
    assert "not available: no phrase cache in this build" in cached or re.search(
        r"\| [1-9]\d* \| \d+\.\d \|", cached
    )
    assert re.search(r"waited for a handshake\*\* \| \*\*\d+\*\*", section(results, PARTS[2]))
    assert "the scenario broke" not in results  # each overload scenario ran to its figures
    sound = section(results, PARTS[4])
    for heading in ("### Loudness as heard", "### A preemption cut", "### The tail"):
        assert heading in sound, sound
    for source in ("| espeak-ng |", "| Deepgram |", "| cached phrase |", "| chime alarm |"):
        line = next(line for line in sound.splitlines() if line.startswith(source))
        assert re.search(r"\| -\d+\.\d\d( / -\d+\.\d\d)? \| -\d+\.\d\d \|$", line), line
    verdicts = re.findall(r"\| \*\*(PASS|FAIL)\*\* \|", sound)
    assert len(verdicts) >= 3, sound  # a verdict per target, whichever it is
    assert re.search(r"largest step at the cut, as recorded \| [1-9]\d* \| \d+ \|", sound), sound
    assert re.search(r"\| 150 ms \(default\) \| [1-9]\d* \| \d+\.\d % \|", sound), sound
    ducking = section(results, PARTS[5])
    for backend in ("MPD", "PulseAudio", "Snapcast"):
        for measure in (r"\*\*publish → down\*\*", r"\*\*last sound → back\*\*"):
            row = rf"\| {backend} \| {measure} \| [1-9]\d* \| \d+\.\d \| \d+\.\d \| \d+\.\d \|"
            assert re.search(row, ducking), ducking
    assert "What bounds them" in ducking, ducking

    for plot in ("results.png", "sound.png"):
        assert (tmp_path / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"({plot})" in results
