"""The outbox on its own: every event out, and the journal kept true to them (a real journal on
disk, a publisher that holds the broker's acknowledgements until the test gives them)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from herald.announcement import NO_DEFAULTS, Announcement, parse_payload
from herald.events import Event, about
from herald.journal import QueueJournal
from herald.outbox import Outbox

TOPIC = "herald/test/events"


class Broker:
    """Keeps what is published; acknowledges a message only when the test says so."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str]] = []
        self._unacknowledged: list[Callable[[], None]] = []

    def publish(
        self,
        topic: str,
        payload: bytes | str,
        qos: int = 1,
        retain: bool = False,
        on_acknowledged: Callable[[], None] | None = None,
    ) -> None:
        self.sent.append((topic, str(payload)))
        if on_acknowledged is not None:
            self._unacknowledged.append(on_acknowledged)

    def acknowledge_all(self) -> None:
        acknowledged, self._unacknowledged = self._unacknowledged, []
        for call in acknowledged:
            call()

    def events(self) -> list[tuple[str, str | None]]:
        return [(e["event"], e["id"]) for e in (json.loads(p) for _, p in self.sent)]


def announcement(ident: str, text: str = "The washing is done.") -> Announcement:
    payload = json.dumps({"id": ident, "text": text}).encode()
    return parse_payload(payload, 16384, time.time(), NO_DEFAULTS)


@pytest.fixture
def journal(tmp_path: Path) -> QueueJournal:
    journal = QueueJournal(tmp_path / "queue.journal")
    journal.load()
    return journal


def on_disk(path: Path) -> tuple[list[str], list[str]]:
    """What a crash now would leave for the restart, read from the file as it is (loading a
    journal would rewrite it under the one in use): the ids offered again, and the ids whose
    final event is sent again."""
    pending: dict[str, None] = {}
    unreported: dict[str, None] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        entry = json.loads(line)
        if "add" in entry:
            pending[entry["add"]["id"]] = None
        elif "done" in entry:
            pending.pop(entry["done"], None)
            unreported[entry["done"]] = None
        elif "reported" in entry:
            unreported.pop(entry["reported"], None)
    return list(pending), list(unreported)


def test_a_queued_announcement_is_in_the_journal_before_its_event_goes_out(
    journal: QueueJournal,
) -> None:
    broker = Broker()
    seen_on_disk: list[list[str]] = []

    class Watching(Broker):
        def publish(self, topic: str, payload: bytes | str, *args: object, **kw: object) -> None:
            seen_on_disk.append(on_disk(journal.path)[0])
            broker.publish(topic, payload)

    outbox = Outbox(Watching(), TOPIC, journal)
    outbox.emit(about(announcement("a"), "queued", {"priority": "normal"}))

    assert seen_on_disk == [["a"]]  # written before it was published
    assert broker.events() == [("queued", "a")]
    assert on_disk(journal.path) == (["a"], [])


def test_a_final_event_settles_it_and_the_broker_s_acknowledgement_forgets_it(
    journal: QueueJournal,
) -> None:
    broker = Broker()
    outbox = Outbox(broker, TOPIC, journal)
    first, second = announcement("first"), announcement("second", "Someone is at the door.")
    for each in (first, second):
        outbox.emit(about(each, "queued", {}))
    broker.acknowledge_all()  # (a queued event settles nothing)
    outbox.emit(about(first, "started", {}))
    outbox.emit(about(first, "finished", {"voice": "espeak"}))
    outbox.emit(about(second, "preempted", {"by": "x", "requeued": True}))  # not its fate

    # Not acknowledged yet: a crash now offers `second` again and sends first's event again.
    assert on_disk(journal.path) == (["second"], ["first"])
    broker.acknowledge_all()
    assert on_disk(journal.path) == (["second"], [])


def test_the_unacknowledged_final_events_are_sent_again_the_same(journal: QueueJournal) -> None:
    before = Broker()
    outbox = Outbox(before, TOPIC, journal)
    gone = announcement("gone")
    outbox.emit(about(gone, "queued", {}))
    outbox.emit(about(gone, "dropped", {"reason": "stopped"}))
    journal.close()  # Herald stops before the broker acknowledged the event

    restarted = QueueJournal(journal.path)
    assert restarted.load() == []
    after = Broker()
    Outbox(after, TOPIC, restarted).send_unreported()
    assert after.sent == [before.sent[-1]]  # the same event, ts and all
    assert on_disk(journal.path) == ([], ["gone"])
    after.acknowledge_all()
    assert on_disk(journal.path) == ([], [])


def test_a_refusal_that_names_a_queued_id_does_not_settle_it(journal: QueueJournal) -> None:
    broker = Broker()
    outbox = Outbox(broker, TOPIC, journal)
    queued = announcement("same")
    outbox.emit(about(queued, "queued", {}))
    outbox.emit(Event("rejected", "same", details={"reason": "id 'same' is already queued"}))
    broker.acknowledge_all()
    assert on_disk(journal.path) == (["same"], [])


def test_without_a_journal_events_still_go_out_and_to_every_follower() -> None:
    broker, followed = Broker(), list[object]()
    outbox = Outbox(broker, TOPIC, journal=None)
    outbox.follow(followed.append)
    outbox.follow(lambda event: followed.append(event.kind))
    event = about(announcement("a"), "finished", {})
    outbox.emit(event)

    assert not outbox.keeps_queue
    assert broker.events() == [("finished", "a")]
    assert followed == [event, "finished"]
