"""The sound around an announcement: the amplifier switched by real commands, the keep-awake
tone and the tail through real ALSA into a PulseAudio null sink (recorded from its monitor)."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncGenerator
from pathlib import Path

import numpy as np
import pytest

from herald.amp import Amplifier
from herald.announcement import NO_DEFAULTS, Announcement, parse_payload
from herald.audio.alsa import AlsaOutput
from herald.audio.dsp import Samples, keep_awake_tone
from herald.config import AmpConfig, AudioConfig
from herald.speaker import Delivery, Speaker
from tests.fake_deepgram import dominant_hz
from tests.fake_slng import RecordingSink
from tests.support import RATE, PulseServer
from tests.test_voice_and_speaker import StubVoice


class Beep(StubVoice):
    """Says every text as `seconds` of a tone; its last 50 ms at another pitch (a marker)."""

    name = "beep"

    def __init__(self, seconds: float = 0.5, paced: bool = False) -> None:
        self._paced = paced  # as fast as a sound card plays it, or at once
        t = np.arange(round(seconds * RATE)) / RATE
        hz = np.where(t < seconds - 0.05, 440.0, 3000.0)
        self.audio = np.round(np.sin(2 * np.pi * hz * t) * 8000).astype(np.int16)

    async def stream(self, text: str) -> AsyncGenerator[Samples, None]:
        for start in range(0, len(self.audio), 960):
            yield self.audio[start : start + 960]
            await asyncio.sleep(0.02 if self._paced else 0)


def announcement(ident: str = "a", **fields: object) -> Announcement:
    payload = json.dumps({"id": ident, "text": "Hi.", "chime": False, **fields}).encode()
    return parse_payload(payload, 16384, 0.0, NO_DEFAULTS)


def switch_log(tmp_path: Path, seconds: float = 0, warmup_ms: int = 300) -> tuple[AmpConfig, Path]:
    """An amplifier whose switch commands append "on <time>" / "off <time>" to a file, each
    taking `seconds` first (a smart plug over the network)."""
    record = tmp_path / "amp.log"
    script = f'sleep {seconds}; echo "$1 $(date +%s.%N)" >> "$0"'
    cfg = AmpConfig(
        on_command=["sh", "-c", script, str(record), "on"],
        off_command=["sh", "-c", script, str(record), "off"],
        warmup_ms=warmup_ms,
        hold_s=1.0,
    )
    return cfg, record


def switches(record: Path) -> list[tuple[str, float]]:
    if not record.exists():
        return []
    return [(w, float(t)) for w, t in (line.split() for line in record.read_text().splitlines())]


class TimedSink(RecordingSink):
    """Keeps when each chunk was played (wall-clock, as the switch log is)."""

    def __init__(self) -> None:
        super().__init__(clock=time.time)


def test_the_amplifier_is_on_and_warm_before_the_first_sound_and_off_after_the_hold(
    tmp_path: Path,
) -> None:
    cfg, record = switch_log(tmp_path)

    async def scenario() -> TimedSink:
        sink = TimedSink()
        amp = Amplifier(cfg)
        speaker = Speaker([Beep()], sink, lambda _: None, Delivery(RATE, amplifier=amp))
        assert await speaker.speak(announcement("first"))
        assert await speaker.speak(announcement("second"))  # back to back: stays on
        assert [w for w, _ in switches(record)] == ["on"]
        await asyncio.sleep(cfg.hold_s + 1.0)
        assert [w for w, _ in switches(record)] == ["on", "off"]
        return sink

    sink = asyncio.run(scenario())
    (_, on_at), (_, off_at) = switches(record)
    assert sink.first_at is not None
    assert sink.first_at - on_at >= cfg.warmup_ms / 1000 - 0.01  # the warm-up was waited for
    assert off_at - sink.first_at >= cfg.hold_s


def test_a_preemption_does_not_switch_the_amplifier_off(tmp_path: Path) -> None:
    cfg, record = switch_log(tmp_path)

    async def scenario() -> None:
        amp = Amplifier(cfg)
        speaker = Speaker(
            [Beep(3.0, paced=True)], RecordingSink(), lambda _: None, Delivery(RATE, amplifier=amp)
        )
        speaking = asyncio.create_task(speaker.speak(announcement("long")))
        await asyncio.sleep(0.6)
        speaking.cancel()  # preempted: the dispatcher cancels it and speaks the urgent one
        with pytest.raises(asyncio.CancelledError):
            await speaking
        assert await speaker.speak(announcement("urgent"))
        await amp.close()

    asyncio.run(scenario())
    assert [w for w, _ in switches(record)] == ["on", "off"]  # the "off" is the close, at stop


def test_an_announcement_cut_short_during_a_switch_never_leaves_the_amplifier_wrong(
    tmp_path: Path,
) -> None:
    """Stopped while the amplifier is being switched on: it still counts as on, and is switched
    off at the end. Stopped while it waits for a switch-off to finish: the next announcement
    still switches it on."""
    cfg, record = switch_log(tmp_path, seconds=0.4, warmup_ms=0)

    async def cut_short(speaker: Speaker, after_s: float) -> None:
        speaking = asyncio.create_task(speaker.speak(announcement()))
        await asyncio.sleep(after_s)
        speaking.cancel()
        with pytest.raises(asyncio.CancelledError):
            await speaking

    async def scenario() -> None:
        amp = Amplifier(cfg)
        speaker = Speaker([Beep()], RecordingSink(), lambda _: None, Delivery(RATE, amplifier=amp))
        await cut_short(speaker, 0.1)  # during the switch-on
        await asyncio.sleep(cfg.hold_s + 0.1)  # the switch-off has begun
        await cut_short(speaker, 0.1)  # waiting for it to finish
        assert await speaker.speak(announcement())
        await amp.close()

    asyncio.run(scenario())
    assert [w for w, _ in switches(record)] == ["on", "off", "on", "off"]


def test_a_failing_switch_costs_one_log_line_and_the_announcement_is_spoken(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = AmpConfig(on_command=[str(tmp_path / "no-such-switch")], warmup_ms=0)
    hung = AmpConfig(on_command=["sleep", "30"], warmup_ms=0, command_timeout_s=0.5)

    async def scenario(amp_cfg: AmpConfig) -> bool:
        speaker = Speaker(
            [Beep()], RecordingSink(), lambda _: None, Delivery(RATE, amplifier=Amplifier(amp_cfg))
        )
        return await speaker.speak(announcement())

    with caplog.at_level(logging.WARNING):
        assert asyncio.run(scenario(cfg))
        assert asyncio.run(scenario(hung))
    lines = [r.getMessage() for r in caplog.records if r.name == "herald.amp"]
    assert len(lines) == 2, lines
    assert "cannot switch the amplifier on" in lines[0] and "no-such-switch" in lines[0]
    assert "sleep (switching on) took over 0 s and was stopped" in lines[1]


class StuckSink(RecordingSink):
    """A device that takes every sample and never plays it: play() waits (back-pressure)."""

    async def play(self, samples: Samples) -> None:
        await asyncio.Event().wait()


def test_a_preemption_at_the_moment_the_keep_awake_tone_stops_is_not_lost() -> None:
    async def scenario() -> None:
        speaker = Speaker(
            [Beep()],
            StuckSink(),
            lambda _: None,
            Delivery(RATE, keep_awake=keep_awake_tone(RATE, -50)),
        )
        speaker.idle()
        await asyncio.sleep(0.05)  # humming, waiting on the device
        speaking = asyncio.create_task(speaker.speak(announcement()))
        await asyncio.sleep(0)  # speak() is stopping the tone
        speaking.cancel()  # and is preempted right then
        await asyncio.wait([speaking], timeout=5)  # (a lost cancel: it waits on the device)
        assert speaking.cancelled()
        await speaker.aclose()

    asyncio.run(scenario())


def paced(pulse: PulseServer) -> AlsaOutput:
    return AlsaOutput(AudioConfig(device="herald_paced", sample_rate=RATE))


def test_the_keep_awake_tone_plays_while_idle_and_gives_way_to_an_announcement(
    tmp_path: Path, pulse: PulseServer
) -> None:
    tone = keep_awake_tone(RATE, -50.0)
    voice = Beep(1.0)

    async def scenario() -> None:
        output = paced(pulse)
        speaker = Speaker([voice], output, lambda _: None, Delivery(RATE, keep_awake=tone))
        speaker.idle()
        await asyncio.sleep(3.0)  # the monitor records nothing for its first ~2 s
        assert await speaker.speak(announcement())
        await asyncio.sleep(1.5)
        await speaker.aclose()
        await output.close()

    with pulse.record(tmp_path / "heard.raw") as recording:
        asyncio.run(scenario())
    heard = np.frombuffer(recording.read_bytes(), dtype="<i2")
    loud = np.flatnonzero(np.abs(heard) > 2000)
    assert len(loud), "the announcement was not heard"
    before, after = heard[: loud[0] - RATE // 10], heard[loud[-1] + RATE // 5 :]
    for idle in (before, after):  # idle before and after: the tone, quiet and non-zero
        assert len(idle) > RATE // 2
        assert 0 < np.abs(idle).max() <= np.abs(tone).max() + 2
        assert dominant_hz(idle, RATE) == pytest.approx(15, abs=2)


@pytest.mark.parametrize("tail_ms", [0, 150])
def test_the_last_50_ms_reach_the_speaker(tmp_path: Path, pulse: PulseServer, tail_ms: int) -> None:
    """The voice's last 50 ms (a 3 kHz marker) are heard whole before the output stops."""
    voice = Beep(0.6)

    async def scenario() -> None:
        output = paced(pulse)
        speaker = Speaker([voice], output, lambda _: None, Delivery(RATE, tail_ms=tail_ms))
        await asyncio.sleep(2.5)  # the monitor records nothing for its first ~2 s
        assert await speaker.speak(announcement())
        await asyncio.sleep(0.5)
        await output.close()

    with pulse.record(tmp_path / "heard.raw") as recording:
        asyncio.run(scenario())
    heard = np.frombuffer(recording.read_bytes(), dtype="<i2")
    assert dominant_hz(voice.audio[-RATE // 20 :], RATE) == pytest.approx(3000, abs=5)
    ending = voice.audio[-RATE // 10 :]  # the last 100 ms: 50 ms of 440 Hz, then the marker
    score = np.correlate(heard.astype(np.float64), ending.astype(np.float64), "valid")
    at = int(np.argmax(score))
    assert np.array_equal(heard[at : at + len(ending)], ending), "the end did not arrive whole"
    assert not heard[at + len(ending) :].any()  # silence after it (the tail, or nothing)
