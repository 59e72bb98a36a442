"""A small JSON file in `state_dir` that Herald keeps across restarts (controls, the last
announcement): replaced whole, so a crash leaves the old one; a disk that cannot be written
(read-only, full) costs one warning until a write works again, not one per change."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class StateFile:
    def __init__(self, path: Path, what: str) -> None:
        """`what`: the few words a log line names the file's content with."""
        self.path = path
        self._what = what
        self._failing = False

    def write(self, data: dict[str, Any]) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fresh = self.path.with_suffix(".tmp")
            fresh.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
            fresh.replace(self.path)
        except OSError as exc:
            if not self._failing:
                log.warning(
                    "cannot keep %s in %s (%s); trying again at each change",
                    self._what,
                    self.path,
                    exc.strerror or exc,
                )
            self._failing = True
            return
        if self._failing:
            log.info("keeping %s in %s again", self._what, self.path)
            self._failing = False
