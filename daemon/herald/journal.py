"""The queue journal: every accepted announcement is on disk until its fate is known.

After a crash or a restart the announcements still in the journal are offered again (an expired
one then gets its `expired` event). The file is JSON lines: `{"add": {...}}` when an announcement
is accepted, `{"done": id}` when it was spoken, expired, dropped or failed. It is rewritten
compactly at start and whenever it grows.

Every line is written at once (a crash of Herald loses none); `sync()` makes the additions
durable against a power cut, and the broker is told a message arrived only after it: the MQTT
bridge calls it once for all the messages of a burst (one fdatasync on a slow SD card, not one
per message).
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
        self._unsynced = False  # additions written since the last sync

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
        self._append({"add": dataclasses.asdict(announcement)})
        self._unsynced = True

    def done(self, announcement_id: str) -> None:
        if self._pending.pop(announcement_id, None) is not None:
            self._append({"done": announcement_id})

    def sync(self) -> None:
        """Make what was added durable (before the broker is acknowledged)."""
        if self._unsynced and self._file is not None:
            os.fdatasync(self._file.fileno())
        self._unsynced = False

    def close(self) -> None:
        if self._file is not None:
            self.sync()
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

    def _append(self, entry: dict[str, Any]) -> None:
        if self._file is None or self._lines >= COMPACT_AFTER_LINES:
            self._rewrite()
        assert self._file is not None
        self._file.write(json.dumps(entry, ensure_ascii=False) + "\n")
        self._file.flush()  # in the kernel's hands: a crash of Herald loses nothing
        self._lines += 1

    def _rewrite(self) -> None:
        """Write only what is pending, atomically (a new file renamed over the old one)."""
        if self._file is not None:
            self._file.close()  # no sync: the new file holds everything pending, synced
            self._file = None
        fresh = self.path.with_suffix(".tmp")
        with fresh.open("w", encoding="utf-8") as out:
            for announcement in self._pending.values():
                out.write(json.dumps({"add": dataclasses.asdict(announcement)}) + "\n")
            out.flush()
            os.fsync(out.fileno())
        fresh.replace(self.path)
        self._file = self.path.open("a", encoding="utf-8")
        self._lines = len(self._pending)
        self._unsynced = False  # everything pending was just written and synced
