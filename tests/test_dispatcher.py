"""The dispatcher on its own: a real Speaker with espeak-ng and a recording output, no broker."""

from __future__ import annotations

import asyncio
import json

from herald.announcement import NO_DEFAULTS
from herald.config import EspeakConfig
from herald.dispatcher import Dispatcher
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
