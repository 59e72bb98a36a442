"""One status, two forms: the retained JSON Home Assistant reads and the line systemd shows."""

from __future__ import annotations

import asyncio
import json
import time

from herald.announcement import NO_DEFAULTS, parse_payload
from herald.controls import Controls
from herald.events import about
from herald.scheduler import Scheduler
from herald.status import IDLE, SPEAKING, WAITING_FOR_AUDIO, Status, StatusBoard


class Voice:
    name = "deepgram"

    def describe(self) -> str:
        return "deepgram warm (age 3 min)"


def board(scheduler: Scheduler, published: list[str], device: str | None = None) -> StatusBoard:
    return StatusBoard(
        scheduler,
        [Voice()],  # type: ignore[list-item]
        Controls(0.8),
        published.append,
        device_problem=lambda: device,
    )


def speaking(scheduler: Scheduler, ident: str = "door") -> None:
    payload = json.dumps({"id": ident, "text": "Someone is at the door.", "priority": "high"})
    scheduler.offer(parse_payload(payload.encode(), 16384, time.time(), NO_DEFAULTS), time.time())
    announcement, _ = scheduler.start_next(time.time())
    assert announcement is not None


def test_both_forms_come_from_one_status() -> None:
    status = Status(
        state=SPEAKING,
        current=("door", "high"),
        queue_length=2,
        voice="deepgram",
        degraded=False,
        voices=("deepgram warm (age 3 min)", "espeak ready"),
        volume=0.8,
        quiet=False,
        last=None,
        audio=None,
    )
    assert json.loads(status.to_json()) == {
        "state": "speaking",
        "current": {"id": "door", "priority": "high"},
        "queue_length": 2,
        "voice": "deepgram",
        "degraded": False,
        "voice_status": "deepgram warm (age 3 min), espeak ready",
        "volume": 0.8,
        "quiet": False,
        "last": None,
        "audio": None,
    }
    line = "speaking door (high) · deepgram warm (age 3 min) · espeak ready · queue 2"
    assert status.line() == line


def test_a_device_problem_shows_in_both_even_while_idle() -> None:
    async def scenario() -> tuple[Status, list[str]]:
        published: list[str] = []
        status = board(Scheduler(), published, device="ALSA device 'usb' failed: I/O error")
        status.changed()
        await asyncio.sleep(0)
        return status.now(), published

    now, published = asyncio.run(scenario())
    assert now.state == IDLE
    assert now.line().endswith("queue 0 · ALSA device 'usb' failed: I/O error")
    assert json.loads(published[-1])["audio"] == "ALSA device 'usb' failed: I/O error"


def test_waiting_for_the_device_is_its_own_state_and_the_reported_problem_comes_first() -> None:
    async def scenario() -> tuple[Status, Status]:
        scheduler = Scheduler()
        status = board(scheduler, [], device="an older problem")
        speaking(scheduler)
        status.audio("cannot open ALSA device 'usb': No such device")
        waiting = status.now()
        status.audio(None)
        return waiting, status.now()

    waiting, then = asyncio.run(scenario())
    assert waiting.state == WAITING_FOR_AUDIO
    assert waiting.line().startswith("door (high) waits for the audio device · ")
    assert waiting.audio == "cannot open ALSA device 'usb': No such device"
    assert then.audio == "an older problem"  # what the output itself still says


def test_a_burst_of_changes_is_one_publication_and_the_last_fate_is_kept() -> None:
    async def scenario() -> tuple[list[str], Status]:
        scheduler, published = Scheduler(), list[str]()
        status = board(scheduler, published)
        speaking(scheduler)
        door = scheduler.current
        assert door is not None
        status.note(about(door, "started", {"voice": "espeak", "degraded": True}))
        status.note(about(door, "finished", {"voice": "espeak"}))
        scheduler.finish()
        status.changed()
        await asyncio.sleep(0)
        return published, status.now()

    published, now = asyncio.run(scenario())
    assert len(published) == 1
    shown = json.loads(published[0])
    assert (shown["state"], shown["voice"], shown["degraded"]) == (IDLE, "espeak", True)
    assert shown["last"]["id"] == "door" and shown["last"]["event"] == "finished"
    assert shown["last"]["text"] == "Someone is at the door."
    assert now.line().startswith("idle · ")
