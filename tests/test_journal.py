"""The queue journal on a real file: what a restart finds after a crash at any moment."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from herald.announcement import Announcement
from herald.journal import COMPACT_AFTER_LINES, QueueJournal


def finished(ident: str) -> str:
    return json.dumps({"event": "finished", "id": ident, "ts": 1.0})


def opened(path: Path) -> QueueJournal:
    """A journal as Herald starts it: loaded from its file (if any)."""
    journal = QueueJournal(path)
    journal.load()
    return journal


def after_restart(path: Path) -> tuple[list[str], list[tuple[str, str]]]:
    """What the next start finds: the ids offered again, and the events sent again."""
    journal = QueueJournal(path)
    return [announcement.id for announcement in journal.load()], journal.unreported()


def test_an_announcement_stays_until_its_final_event_is_acknowledged(tmp_path: Path) -> None:
    path = tmp_path / "queue.journal"
    journal = QueueJournal(path)
    assert journal.load() == []
    journal.add(Announcement("a", "Spoken."))
    journal.add(Announcement("b", "Waiting."))
    assert journal.settle("a", finished("a"))
    # A crash now (no close): "a" is not spoken again, but its event is sent again.
    assert after_restart(path) == (["b"], [("a", finished("a"))])
    opened(path).reported("a")  # the broker acknowledged the event sent again
    assert after_restart(path) == (["b"], [])


def test_what_was_never_queued_is_not_settled(tmp_path: Path) -> None:
    journal = opened(tmp_path / "queue.journal")
    assert not journal.settle("stranger", finished("stranger"))
    assert journal.unreported() == []


def test_an_id_used_again_survives_compaction_under_its_new_words(tmp_path: Path) -> None:
    path = tmp_path / "queue.journal"
    journal = opened(path)
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
    assert after_restart(path) == ([], [])


def test_a_closed_journal_writes_nothing_more(tmp_path: Path) -> None:
    path = tmp_path / "queue.journal"
    journal = opened(path)
    journal.add(Announcement("a", "Spoken."))
    journal.settle("a", finished("a"))
    journal.close()
    journal.reported("a")  # a late acknowledgement, after the end of the run
    assert after_restart(path) == ([], [("a", finished("a"))])


def test_a_journal_holding_thousands_is_not_rewritten_at_every_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rewrites = 0
    real_fsync = os.fsync

    def counting_fsync(fd: int) -> None:  # the journal fsyncs once per rewrite
        nonlocal rewrites
        rewrites += 1
        real_fsync(fd)

    journal = opened(tmp_path / "queue.journal")
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
    assert after_restart(tmp_path / "queue.journal") == ([], [])


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


FULL_DISK_SCRIPT = """
import json, logging, resource, signal, sys
from pathlib import Path
from herald.announcement import Announcement
from herald.journal import QueueJournal

logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
journal = QueueJournal(Path(sys.argv[1]))
journal.load()
journal.add(Announcement("before", "Written."))
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # past the limit a write fails with EFBIG
limit = Path(sys.argv[1]).stat().st_size
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
journal.add(Announcement("during1", "Not written."))
journal.add(Announcement("during2", "Not written either."))
journal.sync()
resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
journal.add(Announcement("after", "Written, with all the rest."))
"""


def test_a_disk_that_refuses_writes_costs_the_safety_net_not_the_daemon(
    tmp_path: Path,
) -> None:
    """A full SD card: the journal says so once and carries on; once the disk takes writes
    again, the next line writes a complete journal, the ones it missed included."""
    path = tmp_path / "queue.journal"
    done = subprocess.run(
        [sys.executable, "-c", FULL_DISK_SCRIPT, str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("ERROR")]
    assert len(errors) == 1 and "cannot write" in errors[0] and str(path) in errors[0], errors
    assert "writing" in done.stderr.splitlines()[-1] and "again" in done.stderr.splitlines()[-1]
    assert after_restart(path) == (["before", "during1", "during2", "after"], [])


def test_a_journal_that_cannot_be_written_at_start_costs_one_line_not_the_start(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A read-only or full state_dir: Herald speaks on without its net, as it does when the disk
    # fails while it runs (it used to exit with a traceback, and systemd restarted it in a loop).
    path = tmp_path / "queue.journal"
    before = QueueJournal(path)
    before.load()
    before.add(Announcement("kept", "Still here."))
    before.close()
    (tmp_path / "queue.tmp").mkdir()  # the compact copy cannot be written

    journal = QueueJournal(path)
    assert [a.id for a in journal.load()] == ["kept"]
    journal.add(Announcement("new", "Spoken all the same."))
    assert journal.settle("new", finished("new"))
    journal.sync()

    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and errors[0].startswith(f"journal: cannot write {path}")


def test_a_journal_that_cannot_be_read_is_set_aside_not_overwritten(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A journal Herald cannot read (a permission, a failing SD card) used to be replaced by an
    # empty one at start: what it held was gone for good. It is kept for a person to look at.
    path = tmp_path / "queue.journal"
    path.mkdir()  # reading it fails (root ignores file modes, so a directory stands in)
    (path / "what-it-held").write_text("still here")

    journal = QueueJournal(path)
    assert journal.load() == []
    journal.add(Announcement("new", "A fresh start."))

    assert (tmp_path / "queue.unreadable" / "what-it-held").read_text() == "still here"
    assert after_restart(path) == (["new"], [])
    (error,) = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert error.startswith(f"journal: cannot read {path}") and "queue.unreadable" in error
