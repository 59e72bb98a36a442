"""The dispatcher on its own: a real Speaker with espeak-ng and a recording output, no broker."""

from __future__ import annotations

import asyncio
import json
import time

from herald.announcement import NO_DEFAULTS, parse_payload
from herald.config import EspeakConfig
from herald.dispatcher import Dispatcher, RecentlyTaken
from herald.events import Event
from herald.scheduler import Scheduler
from herald.speaker import Delivery, Speaker
from herald.voice.espeak import EspeakVoice
from tests.fake_slng import RecordingSink

RATE = 48000


def closing_dispatcher(events: list[Event]) -> Dispatcher:
    voices = [EspeakVoice(EspeakConfig(), RATE)]
    speaker = Speaker(voices, RecordingSink(), events.append, Delivery(RATE))
    dispatcher = Dispatcher(speaker, Scheduler(), events.append, NO_DEFAULTS, 16384)
    dispatcher.close()  # shutting down: what arrives now is refused
    return dispatcher


def test_a_message_refused_during_shutdown_keeps_its_id() -> None:
    async def scenario() -> list[Event]:
        events: list[Event] = []
        dispatcher = closing_dispatcher(events)
        dispatcher.accept(json.dumps({"id": "late", "text": "Too late."}).encode(), "t")
        dispatcher.accept(json.dumps({"id": "odd", "text": "x", "bogus": 1}).encode(), "t")
        dispatcher.accept(b"\xff", "t")  # no id to keep
        return events

    events = asyncio.run(scenario())
    assert [(e.kind, e.announcement_id) for e in events] == [
        ("rejected", "late"),
        ("rejected", "odd"),
        ("rejected", None),
    ]
    assert {e.details["reason"] for e in events} == {"herald is shutting down"}


def test_a_redelivery_of_what_the_journal_restored_is_not_spoken_again() -> None:
    """After a crash the journal restores an announcement, which expires at once; then the
    broker sends the same message again (DUP: Herald was killed before acknowledging it). That
    copy is the announcement that already expired; the same words sent anew are a new one."""
    payload = json.dumps({"id": "stale", "text": "Gone stale.", "ttl": 1}).encode()

    async def scenario() -> list[Event]:
        events = Recorder()
        voices = [EspeakVoice(EspeakConfig(), RATE)]
        speaker = Speaker(voices, RecordingSink(), events.append, Delivery(RATE))
        dispatcher = Dispatcher(speaker, Scheduler(), events.append, NO_DEFAULTS, 16384)
        arrived_before_the_crash = parse_payload(payload, 16384, time.time() - 10, NO_DEFAULTS)
        dispatcher.replay([arrived_before_the_crash])
        speaking = asyncio.create_task(dispatcher.speak_queue())
        async with asyncio.timeout(20):
            await events.until("expired")
            assert dispatcher.accept(payload, "t", redelivered=True) is None
            assert dispatcher.accept(payload, "t") is not None  # sent again on purpose
            await events.until("finished")
        speaking.cancel()
        return events.seen

    events = asyncio.run(scenario())
    assert [e.kind for e in events if e.announcement_id == "stale"] == [
        "expired",  # restored: its "queued" went out in the run before the crash
        "queued",
        "started",
        "finished",
    ]


def test_a_redelivery_after_a_lost_connection_is_not_spoken_again() -> None:
    """The connection drops before the broker hears Herald's acknowledgement; by the time the
    broker sends the message again (DUP) Herald has spoken it. The copy is not spoken twice."""
    payload = json.dumps({"id": "once", "text": "Only once.", "chime": False}).encode()

    async def scenario() -> list[Event]:
        events = Recorder()
        voices = [EspeakVoice(EspeakConfig(), RATE)]
        speaker = Speaker(voices, RecordingSink(), events.append, Delivery(RATE))
        dispatcher = Dispatcher(speaker, Scheduler(), events.append, NO_DEFAULTS, 16384)
        speaking = asyncio.create_task(dispatcher.speak_queue())
        async with asyncio.timeout(20):
            assert dispatcher.accept(payload, "t") is not None
            await events.until("finished")
            while dispatcher.current is not None:  # noqa: ASYNC110 (let go after its event)
                await asyncio.sleep(0.01)
            assert dispatcher.accept(payload, "t", redelivered=True) is None
            changed = json.dumps({"id": "once", "text": "Other words.", "chime": False}).encode()
            assert dispatcher.accept(changed, "t", redelivered=True) is not None
        speaking.cancel()
        return events.seen

    kinds = [e.kind for e in asyncio.run(scenario()) if e.announcement_id == "once"]
    assert kinds[:4] == ["queued", "started", "finished", "queued"], kinds


def test_the_memory_of_taken_announcements_is_bounded() -> None:
    taken = RecentlyTaken(3)
    made = [
        parse_payload(json.dumps({"id": f"a{n}", "text": "Hi."}).encode(), 999, 0, NO_DEFAULTS)
        for n in range(5)
    ]
    for announcement in made:
        taken.add(announcement)
    assert [taken.has(a) for a in made] == [False, False, True, True, True]


class Recorder:
    """An event sink that can be waited on."""

    def __init__(self) -> None:
        self.seen: list[Event] = []
        self._arrived = asyncio.Event()

    def append(self, event: Event) -> None:
        self.seen.append(event)
        self._arrived.set()

    async def until(self, kind: str) -> None:
        while not any(e.kind == kind for e in self.seen):
            self._arrived.clear()
            await self._arrived.wait()
