"""A state file that cannot be written says so once, not at every change, and says when it can."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from herald.statefile import StateFile


def test_a_state_file_that_cannot_be_written_warns_once_until_it_can(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="herald.statefile")
    file = StateFile(tmp_path / "controls.json", "the volume and quiet mode")
    in_the_way = tmp_path / "controls.tmp"
    in_the_way.mkdir()  # (root ignores a read-only mode: a directory makes the write fail)
    for volume in (0.1, 0.2, 0.3):
        file.write({"volume": volume})
    assert not file.path.exists()
    in_the_way.rmdir()
    file.write({"volume": 0.4})

    assert json.loads(file.path.read_text()) == {"volume": 0.4}
    lines = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert [level for level, _ in lines] == ["WARNING", "INFO"]
    assert lines[0][1].startswith(f"cannot keep the volume and quiet mode in {file.path}")
    assert lines[1][1] == f"keeping the volume and quiet mode in {file.path} again"
