"""The queue journal on a real file: what a restart finds after a crash at any moment."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from herald.announcement import Announcement
from herald.journal import COMPACT_AFTER_LINES, QueueJournal


def finished(ident: str) -> str:
    return json.dumps({"event": "finished", "id": ident, "ts": 1.0})


def test_an_announcement_stays_until_its_final_event_is_acknowledged(tmp_path: Path) -> None:
    path = tmp_path / "queue.journal"
    journal = QueueJournal(path)
    assert journal.load() == []
    journal.add(Announcement("a", "Spoken."))
    journal.add(Announcement("b", "Waiting."))
    assert journal.settle("a", finished("a"))
    # A crash now (no close): "a" is not spoken again, but its event is sent again.
    after_crash = QueueJournal(path)
    assert [x.id for x in after_crash.load()] == ["b"]
    assert after_crash.unreported() == [("a", finished("a"))]
    after_crash.reported("a")
    again = QueueJournal(path)
    assert [x.id for x in again.load()] == ["b"]
    assert again.unreported() == []


def test_what_was_never_queued_is_not_settled(tmp_path: Path) -> None:
    journal = QueueJournal(tmp_path / "queue.journal")
    journal.load()
    assert not journal.settle("stranger", finished("stranger"))
    assert journal.unreported() == []


def test_an_id_used_again_survives_compaction_under_its_new_words(tmp_path: Path) -> None:
    path = tmp_path / "queue.journal"
    journal = QueueJournal(path)
    journal.load()
    journal.add(Announcement("door", "The door is open."))
    journal.settle("door", finished("door"))
    journal.add(Announcement("door", "The door is still open."))
    for _ in range(2):  # each load rewrites the file compactly
        restarted = QueueJournal(path)
        assert [x.text for x in restarted.load()] == ["The door is still open."]
        assert restarted.unreported() == [("door", finished("door"))]


def test_a_journal_from_before_fates_were_kept_loads(tmp_path: Path) -> None:
    path = tmp_path / "queue.journal"
    added = {"add": {"id": "old", "text": "Old.", "priority": 50}}
    path.write_text(json.dumps(added) + "\n" + json.dumps({"done": "old"}) + "\n")
    journal = QueueJournal(path)
    assert journal.load() == []
    assert journal.unreported() == []


def test_a_closed_journal_writes_nothing_more(tmp_path: Path) -> None:
    path = tmp_path / "queue.journal"
    journal = QueueJournal(path)
    journal.load()
    journal.add(Announcement("a", "Spoken."))
    journal.settle("a", finished("a"))
    journal.close()
    journal.reported("a")  # a late acknowledgement, after the end of the run
    restarted = QueueJournal(path)
    assert restarted.load() == []
    assert restarted.unreported() == [("a", finished("a"))]


def test_a_journal_holding_thousands_is_not_rewritten_at_every_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rewrites = 0
    real_fsync = os.fsync

    def counting_fsync(fd: int) -> None:  # the journal fsyncs once per rewrite
        nonlocal rewrites
        rewrites += 1
        real_fsync(fd)

    journal = QueueJournal(tmp_path / "queue.journal")
    journal.load()
    monkeypatch.setattr(os, "fsync", counting_fsync)
    held = 3 * COMPACT_AFTER_LINES
    for n in range(held):
        journal.add(Announcement(f"a{n}", "Held."))
    for n in range(held):
        journal.settle(f"a{n}", finished(f"a{n}"))
    for n in range(held):
        journal.reported(f"a{n}")
    assert rewrites <= 10, rewrites  # 9,000 lines: each rewrite at least doubles the room
    monkeypatch.undo()
    restarted = QueueJournal(tmp_path / "queue.journal")
    assert restarted.load() == []
    assert restarted.unreported() == []


def test_the_journal_syncs_only_what_was_added(tmp_path: Path) -> None:
    path = tmp_path / "queue.journal"
    journal = QueueJournal(path)
    assert journal.load() == []
    announcement = Announcement("a", "Hello.")
    journal.add(announcement)
    assert not journal.settle("missing", "{}")  # not pending: nothing written
    journal.sync()
    # A crash now (no close): the line is there for the next start.
    assert QueueJournal(path).load() == [announcement]
