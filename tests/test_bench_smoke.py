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

PARTS = ("## 1. Time to first audio", "## 2. Preemption", "## 3. Rotation", "## 4. Footprint")
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

    png = tmp_path / "results.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "(results.png)" in results
