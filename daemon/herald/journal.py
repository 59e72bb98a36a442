"""The queue journal: every accepted announcement is on disk until its fate is known.

After a crash or a restart the announcements still in the journal are offered again (an expired
one then gets its `expired` event). The file is JSON lines: `{"add": {...}}` when an announcement
is accepted (flushed to the disk before the broker is told it arrived), `{"done": id}` when it
was spoken, expired, dropped or failed. It is rewritten compactly at start and whenever it grows.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
from pathlib import Path
from typing import IO, Any

from herald.announcement import Announcement

log = logging.getLogger(__name__)

COMPACT_AFTER_LINES = 1000


class QueueJournal:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._pending: dict[str, Announcement] = {}
        self._lines = 0
        self._file: IO[str] | None = None

    def load(self) -> list[Announcement]:
        """Read what was pending when Herald last stopped, and start a compact file."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._pending = {}
        with contextlib.suppress(FileNotFoundError), self.path.open(encoding="utf-8") as lines:
            for number, line in enumerate(lines, 1):
                self._replay_line(line, number)
        self._rewrite()
        return list(self._pending.values())

    def add(self, announcement: Announcement) -> None:
        self._pending[announcement.id] = announcement
        self._append({"add": dataclasses.asdict(announcement)}, durable=True)

    def done(self, announcement_id: str) -> None:
        if self._pending.pop(announcement_id, None) is not None:
            self._append({"done": announcement_id}, durable=False)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def _replay_line(self, line: str, number: int) -> None:
        try:
            entry: dict[str, Any] = json.loads(line)
            if "add" in entry:
                announcement = Announcement(**entry["add"])
                self._pending[announcement.id] = announcement
            elif "done" in entry:
                self._pending.pop(str(entry["done"]), None)
        except (ValueError, TypeError) as exc:  # a line cut short by a crash
            log.warning("journal: skipped line %d of %s: %s", number, self.path, exc)

    def _append(self, entry: dict[str, Any], durable: bool) -> None:
        if self._file is None or self._lines >= COMPACT_AFTER_LINES:
            self._rewrite()
        assert self._file is not None
        self._file.write(json.dumps(entry, ensure_ascii=False) + "\n")
        self._file.flush()
        if durable:  # the broker is acknowledged only after this returns
            os.fdatasync(self._file.fileno())
        self._lines += 1

    def _rewrite(self) -> None:
        """Write only what is pending, atomically (a new file renamed over the old one)."""
        self.close()
        fresh = self.path.with_suffix(".tmp")
        with fresh.open("w", encoding="utf-8") as out:
            for announcement in self._pending.values():
                out.write(json.dumps({"add": dataclasses.asdict(announcement)}) + "\n")
            out.flush()
            os.fsync(out.fileno())
        fresh.replace(self.path)
        self._file = self.path.open("a", encoding="utf-8")
        self._lines = len(self._pending)
