"""The queue journal: every accepted announcement is on disk until the broker has its fate.

After a crash or a restart the announcements still in the journal are offered again (an expired
one then gets its `expired` event), and the final events the broker never acknowledged are sent
again: an event emitted a moment before a crash (still in the MQTT client's memory) is not lost.

The file is JSON lines:
- `{"add": {...}}` when an announcement is accepted;
- `{"done": id, "event": "..."}` when it reached its fate (spoken, expired, dropped, failed),
  with the final event as published;
- `{"reported": id}` once the broker acknowledged that event.
It is rewritten compactly at start and whenever it grows.

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

COMPACT_AFTER_LINES = 1000  # at least; and never before the file is twice what it holds


class QueueJournal:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._pending: dict[str, Announcement] = {}
        self._unreported: dict[str, str] = {}  # id → its final event (JSON), not yet acked
        self._lines = 0
        self._file: IO[str] | None = None
        self._closed = False
        self._failing = False  # the last write failed (said once, until one succeeds)
        self._unsynced = False  # additions written since the last sync

    def load(self) -> list[Announcement]:
        """Read what was pending when Herald last stopped, and start a compact file.

        A journal that cannot be read or written (a read-only or full disk) costs one error
        line: Herald speaks on without its net, and tries the file again at each change.
        """
        self._pending, self._unreported = {}, {}
        try:
            with (
                contextlib.suppress(FileNotFoundError),
                self.path.open(encoding="utf-8", errors="replace") as f,
            ):
                for number, line in enumerate(f, 1):
                    self._replay_line(line, number)
        except OSError as exc:
            self._set_aside(exc)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._rewrite()
        except OSError as exc:
            self._failed(exc)
        return list(self._pending.values())

    def _set_aside(self, exc: OSError) -> None:
        """A journal that cannot be read (a permission, a failing card) is kept for a person,
        under another name, rather than replaced by the fresh one."""
        aside = self.path.with_suffix(".unreadable")
        try:
            self.path.replace(aside)
            kept = f"kept as {aside}"
        except OSError:
            kept = "left as it is"
        log.error(
            "journal: cannot read %s (%s); %s, and a fresh journal started: what it held is not "
            "spoken again",
            self.path,
            exc.strerror or exc,
            kept,
        )

    def unreported(self) -> list[tuple[str, str]]:
        """(id, final event) of each fate the broker has not acknowledged yet, oldest first."""
        return list(self._unreported.items())

    def add(self, announcement: Announcement) -> None:
        self._pending[announcement.id] = announcement
        self._append({"add": dataclasses.asdict(announcement)})
        self._unsynced = True

    def settle(self, announcement_id: str, event: str) -> bool:
        """The announcement reached its fate, told by `event`: it will not be offered again,
        and the event is sent again after a restart until `reported`. False if it was not
        pending (nothing to keep)."""
        if self._pending.pop(announcement_id, None) is None:
            return False
        self._unreported[announcement_id] = event
        self._append({"done": announcement_id, "event": event})
        return True

    def reported(self, announcement_id: str) -> None:
        """The broker has the final event: the announcement can be forgotten."""
        if self._unreported.pop(announcement_id, None) is not None:
            self._append({"reported": announcement_id})

    def sync(self) -> None:
        """Make what was added durable (before the broker is acknowledged)."""
        if self._unsynced and self._file is not None:
            try:
                os.fdatasync(self._file.fileno())
            except OSError as exc:
                self._failed(exc)
        self._unsynced = False

    def close(self) -> None:
        """At the end of the run: later changes (a late acknowledgement) are not written."""
        if self._file is not None:
            self.sync()
            self._file.close()
            self._file = None
        self._closed = True

    def _replay_line(self, line: str, number: int) -> None:
        try:
            entry: dict[str, Any] = json.loads(line)
            if "add" in entry:
                announcement = Announcement(**entry["add"])
                self._pending[announcement.id] = announcement
            elif "done" in entry:
                announcement_id = str(entry["done"])
                self._pending.pop(announcement_id, None)
                if isinstance(event := entry.get("event"), str):
                    self._unreported[announcement_id] = event
            elif "reported" in entry:
                self._unreported.pop(str(entry["reported"]), None)
        except (ValueError, TypeError) as exc:  # a line cut short by a crash
            log.warning("journal: skipped line %d of %s: %s", number, self.path, exc)

    def _append(self, entry: dict[str, Any]) -> None:
        if self._closed:
            log.debug("journal: closed; not written: %s", next(iter(entry)))
            return
        try:
            if self._file is None or self._lines >= self._compact_at():
                self._rewrite()
            assert self._file is not None
            self._file.write(json.dumps(entry, ensure_ascii=False) + "\n")
            self._file.flush()  # in the kernel's hands: a crash of Herald loses nothing
            self._lines += 1
        except OSError as exc:  # a full or failing disk: Herald speaks on, without a net
            self._failed(exc)
            return
        if self._failing:
            log.info("journal: writing %s again", self.path)
            self._failing = False

    def _failed(self, exc: OSError) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None  # the next line starts a fresh, complete file
        if not self._failing:
            log.error(
                "journal: cannot write %s (%s): a crash now would lose the queue",
                self.path,
                exc.strerror or exc,
            )
        self._failing = True

    def _compact_at(self) -> int:
        """Rewrite once the file has many lines, and at least twice what it still holds (a
        journal holding thousands is not rewritten at every line)."""
        return max(COMPACT_AFTER_LINES, 2 * (len(self._pending) + len(self._unreported)))

    def _rewrite(self) -> None:
        """Write only what is pending or unreported, atomically (a new file renamed over the
        old one)."""
        if self._file is not None:
            self._file.close()  # no sync: the new file holds everything pending, synced
            self._file = None
        fresh = self.path.with_suffix(".tmp")
        with fresh.open("w", encoding="utf-8") as out:
            # The fates first: an id used again later is pending under its new words.
            for announcement_id, event in self._unreported.items():
                out.write(json.dumps({"done": announcement_id, "event": event}) + "\n")
            for announcement in self._pending.values():
                out.write(json.dumps({"add": dataclasses.asdict(announcement)}) + "\n")
            out.flush()
            os.fsync(out.fileno())
        fresh.replace(self.path)
        self._file = self.path.open("a", encoding="utf-8")
        self._lines = len(self._pending) + len(self._unreported)
        self._unsynced = False  # everything pending was just written and synced
