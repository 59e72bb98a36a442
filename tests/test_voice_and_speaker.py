"""The espeak-ng voice as a real subprocess, and the Speaker's fallback from voice to voice."""

from __future__ import annotations

import asyncio
import wave
from collections.abc import AsyncGenerator
from pathlib import Path

import numpy as np
import pytest

from herald.announcement import Announcement
from herald.audio.dsp import Samples
from herald.audio.wav import WavFileOutput
from herald.config import AudioConfig, EspeakConfig
from herald.events import Event
from herald.speaker import LOOKAHEAD_MS, Delivery, Speaker
from herald.voice.base import Voice, VoiceError
from herald.voice.espeak import EspeakVoice
from tests.fake_slng import RecordingSink
from tests.support import contains_speech, espeak_reference, similarity


async def collect(voice: EspeakVoice, text: str) -> np.ndarray:
    chunks = [chunk async for chunk in voice.stream(text)]
    return np.concatenate(chunks) if chunks else np.zeros(0, np.int16)


@pytest.mark.parametrize("rate", [16000, 48000])
def test_espeak_streams_speech_at_the_output_rate(rate: int) -> None:
    samples = asyncio.run(collect(EspeakVoice(EspeakConfig(), rate), "Testing one two three."))
    reference = espeak_reference("Testing one two three.", rate)
    assert contains_speech(samples, rate)
    assert abs(len(samples) - len(reference)) <= 2
    assert similarity(samples, reference) > 0.99


def test_text_is_never_taken_for_an_option() -> None:
    samples = asyncio.run(collect(EspeakVoice(EspeakConfig(), 16000), "--version"))
    assert contains_speech(samples, 16000)


def test_an_unknown_espeak_voice_says_so() -> None:
    voice = EspeakVoice(EspeakConfig(voice="xx-nowhere"), 16000)
    with pytest.raises(
        VoiceError, match=r"espeak-ng \(voice 'xx-nowhere'\) failed: .*does not exist"
    ):
        asyncio.run(collect(voice, "hello"))


def test_a_missing_espeak_binary_says_how_to_install_it() -> None:
    voice = EspeakVoice(EspeakConfig(), 16000, binary="espeak-ng-not-installed")
    with pytest.raises(VoiceError, match=r"not installed \(apt install espeak-ng\)"):
        asyncio.run(collect(voice, "hello"))


def child_processes() -> set[str]:
    """Names of this process's children, zombies (exited, not yet reaped) included."""
    names = set()
    for task in Path("/proc/self/task").iterdir():
        for pid in (task / "children").read_text().split():
            names.add(Path(f"/proc/{pid}/comm").read_text().strip())
    return names


def test_stopping_a_stream_early_leaves_no_process_behind() -> None:
    async def take_one_chunk() -> tuple[set[str], set[str]]:
        voice = EspeakVoice(EspeakConfig(), 48000)
        stream = voice.stream("A long text that would take a while to speak. " * 50)
        await anext(stream)
        during = child_processes()
        await stream.aclose()
        return during, child_processes()

    during, after = asyncio.run(take_one_chunk())
    assert "espeak-ng" in during
    assert "espeak-ng" not in after


class StubVoice:
    """What a test voice needs besides `stream`: no upkeep, nothing to close, a name."""

    name = "stub"

    async def run(self) -> None:
        pass

    def describe(self) -> str:
        return self.name

    async def check(self) -> str:
        return self.name

    async def aclose(self) -> None:
        pass


class BrokenVoice(StubVoice):
    """A voice that fails before any audio, like a cloud voice whose server is unreachable."""

    name = "broken"

    async def stream(self, text: str) -> AsyncGenerator[Samples, None]:
        if text:
            raise VoiceError("server unreachable")
        yield np.zeros(0, np.int16)

    async def check(self) -> str:
        raise VoiceError("server unreachable")


def speak_with(voices: list[Voice], tmp_path: Path) -> tuple[bool, list[Event], WavFileOutput]:
    events: list[Event] = []
    output = WavFileOutput(tmp_path / "out.wav", AudioConfig(sample_rate=16000))

    async def run() -> bool:
        speaker = Speaker(voices, output, events.append, Delivery(16000))
        try:
            return await speaker.speak(Announcement("a1", "Fallback works."))
        finally:
            await output.close()

    return asyncio.run(run()), events, output


def test_the_next_voice_speaks_when_the_first_cannot(tmp_path: Path) -> None:
    ok, events, output = speak_with([BrokenVoice(), EspeakVoice(EspeakConfig(), 16000)], tmp_path)
    assert ok
    assert [e.kind for e in events] == ["started", "finished"]
    assert events[0].details == {"voice": "espeak", "degraded": True}
    assert output.frames_written > 0.5 * 16000


def test_when_no_voice_can_speak_the_announcement_fails_with_every_reason(tmp_path: Path) -> None:
    ok, events, _ = speak_with([BrokenVoice()], tmp_path)
    assert not ok
    assert [(e.kind, e.details) for e in events] == [
        ("failed", {"reason": "no voice could speak: broken: server unreachable"})
    ]


class ToneVoice(StubVoice):
    """A voice that says every text as one second of a 440 Hz tone."""

    name = "tone"

    async def stream(self, text: str) -> AsyncGenerator[Samples, None]:
        t = np.arange(16000) / 16000
        yield (np.sin(2 * np.pi * 440 * t) * 10000).astype(np.int16)


def spoken_by_tone(tmp_path: Path, delivery: Delivery, announcement: Announcement) -> np.ndarray:
    output = WavFileOutput(tmp_path / "out.wav", AudioConfig(sample_rate=16000))

    async def run() -> None:
        await Speaker([ToneVoice()], output, lambda _: None, delivery).speak(announcement)
        await output.close()

    asyncio.run(run())
    with wave.open(str(tmp_path / "out.wav")) as wav:
        return np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2")


def test_an_idle_output_gets_a_silent_preroll_to_wake_the_amplifier(tmp_path: Path) -> None:
    delivery = Delivery(16000, wake_preroll_ms=250, idle_after_s=5)
    played = spoken_by_tone(tmp_path, delivery, Announcement("a", "x"))
    assert len(played) == 4000 + 16000
    assert not played[:4000].any()
    assert np.abs(played[4000:4100]).max() > 0


def test_volume_is_software_gain_and_critical_has_a_floor(tmp_path: Path) -> None:
    delivery = Delivery(16000, volume=0.5, critical_min_volume=0.8)
    normal = spoken_by_tone(tmp_path, delivery, Announcement("n", "x"))
    quiet = spoken_by_tone(tmp_path, delivery, Announcement("q", "x", volume=0.1))
    critical = spoken_by_tone(tmp_path, delivery, Announcement("c", "x", 100, volume=0.1))
    assert np.abs(normal).max() == 5000
    assert np.abs(quiet).max() == 1000
    assert np.abs(critical).max() == 8000


def test_the_chime_comes_first_and_the_voice_follows_without_a_gap(tmp_path: Path) -> None:
    chime = np.full(800, 1234, dtype=np.int16)
    delivery = Delivery(16000, chime_for=lambda _: asyncio.sleep(0, chime))
    played = spoken_by_tone(tmp_path, delivery, Announcement("a", "x", repeat=2))
    assert np.array_equal(played[:800], chime)
    assert played[800] == 0 and np.abs(played[801:900]).max() > 0  # sine starts at zero
    assert len(played) == 800 + 16000 + 9600 + 16000  # chime once, a 600 ms pause, twice


class GushingVoice(StubVoice):
    """A voice far quicker than real time: a long text's audio comes as fast as it is taken."""

    name = "gush"

    def __init__(self) -> None:
        self.produced_s = 0.0

    async def stream(self, text: str) -> AsyncGenerator[Samples, None]:
        for _ in range(1800):  # half an hour of speech, a second at a time
            self.produced_s += 1.0
            yield np.full(16000, 100, dtype=np.int16)
            await asyncio.sleep(0)


class SlowChimeOutput:
    """An output whose first sound (the chime) takes until `chime_over` is set to play."""

    def __init__(self) -> None:
        self.chime_over = asyncio.Event()
        self.played_s = 0.0

    async def open(self) -> None:
        pass

    async def play(self, samples: Samples) -> None:
        if self.played_s == 0:
            await self.chime_over.wait()
        self.played_s += len(samples) / 16000
        await asyncio.sleep(0)

    def place(self, at: float) -> None:
        pass

    async def finish(self) -> None:
        pass

    def drop(self) -> None:
        pass

    async def close(self) -> None:
        pass


def test_a_long_text_runs_ahead_of_its_chime_by_seconds_not_by_the_whole_text() -> None:
    # A quick voice used to be read to the end while the chime played, all of its audio kept in
    # memory: 16 KiB of text took half a gigabyte on a Pi with 512 MB.
    async def run() -> tuple[float, float, float]:
        voice, output = GushingVoice(), SlowChimeOutput()
        chime = np.full(1600, 1234, dtype=np.int16)

        async def chime_for(_: Announcement) -> Samples:
            return chime

        speaker = Speaker([voice], output, lambda _: None, Delivery(16000, chime_for=chime_for))
        speaking = asyncio.create_task(speaker.speak(Announcement("long", "x")))
        for _ in range(2000):  # the voice has every chance to run ahead
            await asyncio.sleep(0)
        ahead_during_chime = voice.produced_s
        output.chime_over.set()
        await speaking
        return ahead_during_chime, voice.produced_s, output.played_s

    ahead, produced, played = asyncio.run(run())
    assert 1 <= ahead <= LOOKAHEAD_MS / 1000 + 2
    assert produced == 1800 and played == pytest.approx(1800 + 0.1)  # nothing lost on the way


class BuggyVoice(StubVoice):
    """A voice with a bug: some audio, then an exception that is not a VoiceError."""

    name = "buggy"

    async def stream(self, text: str) -> AsyncGenerator[Samples, None]:
        yield np.full(1600, 1000, np.int16)
        raise RuntimeError("a bug")


def test_a_bug_in_a_voice_fails_the_announcement_with_its_event_and_never_hangs(
    tmp_path: Path,
) -> None:
    async def speak() -> tuple[bool, list[Event]]:
        return await asyncio.wait_for(
            asyncio.to_thread(lambda: speak_with([BuggyVoice()], tmp_path)[:2]), 20
        )

    spoken, events = asyncio.run(speak())
    assert not spoken
    assert [e.kind for e in events] == ["started", "failed"]
    assert events[-1].details["reason"] == "internal error: RuntimeError"


class BufferedVoice(StubVoice):
    """A voice whose whole audio is already there (a socket that received faster than real
    time): it never suspends between chunks. It counts what it has handed over."""

    name = "buffered"

    def __init__(self) -> None:
        self.produced = 0

    async def stream(self, text: str) -> AsyncGenerator[Samples, None]:
        for _ in range(50):  # a second of audio, 20 ms at a time
            self.produced += 1
            yield np.full(320, 1000, dtype=np.int16)


class NotingSink(RecordingSink):
    """Notes how much the voice had produced when the first sound was played."""

    def __init__(self, voice: BufferedVoice) -> None:
        super().__init__()
        self.voice = voice
        self.produced_at_first_play: int | None = None

    async def play(self, samples: Samples) -> None:
        if self.produced_at_first_play is None:
            self.produced_at_first_play = self.voice.produced
        await super().play(samples)


def test_the_first_audio_is_played_before_a_buffered_voice_has_handed_over_the_rest() -> None:
    """The voice runs ahead of the player, but gives it a turn after each chunk: otherwise the
    first sound waits until every frame already received has been read (the benchmark saw the
    time to first audio grow by 7 ms)."""
    voice = BufferedVoice()
    sink = NotingSink(voice)

    async def scenario() -> None:
        await Speaker([voice], sink, lambda _: None, Delivery(16000)).speak(Announcement("a", "x"))

    asyncio.run(scenario())
    assert sink.produced_at_first_play is not None
    assert sink.produced_at_first_play < 10, sink.produced_at_first_play  # a few turns, not 50
    assert len(sink.samples()) == 50 * 320
