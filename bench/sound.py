"""Part 6: sound (issue 16): how loud everything is heard, how a preemption cuts, and the tail.

Everything is measured with Herald's own meter (`herald.audio.meter`, libebur128: BS.1770
integrated loudness and true peak), on what Herald's `Speaker` actually played.

1. Loudness as heard. For each source a real `Speaker`, with the levelling the daemon builds
   (`herald.app.build_delivery` on a config whose `state_dir` is a temporary directory, so
   every voice starts from its prior), plays into a `RecordingSink`; each announcement's
   recording is measured. Sources: espeak-ng; Deepgram, SLNG and the self-hosted gateway (the
   real voice classes against the tests' fakes on loopback, whose audio is a sine tone); three
   "vendors" at different levels (espeak-ng's audio scaled to about -30, -24 and -12 LUFS,
   streamed in 20 ms pieces); a cached phrase (a `PhraseCache` hit, of audio stored at -30 or
   -12 LUFS); and each built-in chime plus a quiet and a loud WAV chime (the chime alone: the
   first `len(chime)` samples of the recording, which the limiter keeps in place). A voice's
   first announcement is levelled by its prior, the later ones by what Herald learned of it.
2. A preemption cut. Speech levelled to the target plays through a real `AlsaOutput` on
   `herald_paced` (ALSA's PulseAudio plugin into a null sink that plays in real time); after
   0.6-1.6 s it is dropped as the Speaker drops it (`drop()`, then the playing task cancelled).
   `parec` records the sink's monitor. The recording is aligned with the signal; the cut starts
   where they part; the largest sample-to-sample step from just before it to the silence after
   it is compared with the largest step in the whole signal. The output's fade alone
   (`AlsaOutput._drop_with_fade` on a stand-in PCM, at the same points) is shown beside it.
3. The tail. A voice says 0.5 s of band-limited noise and then a 50 ms 3 kHz burst: its last
   50 ms are the marker. It is spoken by a Speaker through a real `AlsaOutput` on the same
   paced device, with `audio.tail_ms` at its default and at 0; the fraction of the marker's
   energy the sink's monitor received is reported.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import random
import re
import time
import wave
from collections import deque
from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt

from bench.common import Workspace, log
from bench.preempt import MonitorRecorder
from bench.settings import Settings
from herald.announcement import Announcement, Defaults, parse_payload
from herald.app import announcement_defaults, build_delivery
from herald.audio import AudioSink, alsa
from herald.audio.alsa import FADE_MS, AlsaOutput
from herald.audio.dsp import Samples, apply_gain
from herald.audio.loudness import Levelling, Loudness, Target, VoiceLevels
from herald.audio.meter import measure
from herald.config import AudioConfig, Config, DeepgramConfig, GatewayConfig, SlngConfig
from herald.events import Event
from herald.speaker import Delivery, Speaker
from herald.voice import voices_running
from herald.voice.base import Voice
from herald.voice.cache import PhraseCache
from herald.voice.cached import CachedVoice
from herald.voice.deepgram import DeepgramVoice
from herald.voice.espeak import EspeakVoice
from herald.voice.gateway import GatewayVoice
from herald.voice.slng import SlngVoice
from tests.fake_deepgram import FakeDeepgram, FakeDeepgramOptions
from tests.fake_gateway import FakeGateway, FakeGatewayOptions
from tests.fake_slng import FakeSlng, FakeSlngOptions, RecordingSink
from tests.support import PulseServer
from tests.test_voice_and_speaker import StubVoice

PART = "sound"
RATE = AudioConfig().sample_rate  # the daemon's default output rate
PIECE = RATE // 50  # a voice streams 20 ms pieces
Floats = npt.NDArray[np.float64]

# Different texts, each long enough (over MIN_LEARN_S of speech) for Herald to learn from.
TEXTS = (
    "The washing machine has finished; the laundry can be hung out to dry.",
    "Someone is at the front door.",
    "The garage door has been open for ten minutes.",
    "Rain is expected within the hour, and the bedroom windows are still open.",
    "The dishwasher is done, and the kitchen lights are still on.",
    "Good morning. It is seven o'clock and the coffee is ready.",
    "The car is charged to eighty percent and ready to go.",
    "Motion in the garden while nobody is home.",
)
VENDOR_LEVELS = (-30.0, -24.0, -12.0)  # LUFS: espeak-ng's audio scaled to each
CACHED_LEVELS = (-30.0, -12.0)  # the cached phrases were stored at these, alternately
BUILTIN_CHIMES = ("soft", "bell", "alert", "alarm")
CUT_TEXT = (
    "The front door has been open for ten minutes. Please close it before you leave the "
    "house, and check the windows on the way out."
)
CUT_AFTER_S = (0.6, 1.6)  # the drop comes this long after the sound starts (uniform)
GAP_S = 0.4  # silence between two plays on the paced device
DIFFERS = 8  # a recorded sample this far from the signal's (int16 units) has parted from it
MARKER_HZ = 3000.0
MARKER_MS = 50
LEAD_S = 0.5  # the noise before the marker
SPEAK_TIMEOUT_S = 30.0
FIRST_BYTE_S = 0.01  # the fakes' time to their first audio (only the sound is measured here)


# --- results ----------------------------------------------------------------------------------


@dataclass
class Heard:
    """One announcement as heard: its recording measured, and the source's own level."""

    text: str
    lufs: float | None
    true_peak_dbtp: float | None
    source_lufs: float | None  # the sound as the voice (the cache, the chime) gave it


@dataclass
class Source:
    label: str
    kind: Literal["voice", "cached", "chime"]
    note: str = ""  # what it is made of
    heard: list[Heard] = field(default_factory=list)
    problem: str | None = None

    @property
    def first(self) -> Heard | None:
        return self.heard[0] if self.heard else None

    @property
    def judged(self) -> list[Heard]:
        """What the targets apply to: a voice from its second announcement on (the first is
        levelled by a prior); a chime or a cached phrase always (it is measured whole)."""
        return self.heard[1:] if self.kind == "voice" else self.heard


@dataclass(frozen=True)
class Verdict:
    criterion: str
    value: str
    target: str
    passed: bool


@dataclass
class Cut:
    """One preemption cut, in int16 units."""

    at_ms: float = 0.0  # where in the signal the recording parts from it
    step: float | None = None  # the largest step from just before the cut to the silence
    hard_step: float = 0.0  # |signal| there: the step a cut without a fade would make
    offline_step: float | None = None  # the output's fade alone, at the same point
    local_step: float = 0.0  # the signal's own largest step there (1 ms before, the fade after)
    fade_ms: float | None = None  # from the parting to the last non-zero sample
    silent_ms: float | None = None  # the output's own log: the drop asked -> silent
    on_period: bool = False  # the cut fell on a boundary of the output's periods
    problem: str | None = None


@dataclass
class Tail:
    tail_ms: int
    fraction: float | None = None  # of the marker's energy, received by the sink's monitor
    start_lost_ms: float | None = None  # how much of the sound's start the monitor lacks
    problem: str | None = None


@dataclass
class CutExample:
    """Around one cut, for the plot: the recording, the signal it cut, the fade alone."""

    recorded: list[float]
    signal: list[float]
    offline: list[float]
    start: int  # sample index (in the signal) of the first point


@dataclass
class SoundResult:
    target_lufs: float
    ceiling_dbtp: float
    tail_ms: int  # the default, against 0
    sources: list[Source] = field(default_factory=list)
    signal_step: float = 0.0  # the levelled speech's own largest sample-to-sample step
    signal_lufs: float | None = None
    cuts: list[Cut] = field(default_factory=list)
    tails: list[Tail] = field(default_factory=list)
    example: CutExample | None = None
    device_problem: str | None = None  # why parts 2 and 3 have no figures
    seconds: float = 0.0

    def judged(self) -> list[tuple[Source, Heard]]:
        return [(s, h) for s in self.sources for h in s.judged if h.lufs is not None]

    def verdicts(self) -> list[Verdict]:
        """Issue 16's targets, on the judged announcements (a voice's from its second on,
        every chime and cached phrase)."""
        judged = self.judged()
        if not judged:
            return []
        lufs = [(s.label, h.lufs) for s, h in judged if h.lufs is not None]
        quiet, loud = min(lufs, key=lambda x: x[1]), max(lufs, key=lambda x: x[1])
        worst = max(lufs, key=lambda x: abs(x[1] - self.target_lufs))
        off = worst[1] - self.target_lufs
        peaks = [(s.label, h.true_peak_dbtp) for s, h in judged if h.true_peak_dbtp is not None]
        top = max(peaks, key=lambda x: x[1]) if peaks else None
        verdicts = [
            Verdict(
                "spread between all of them",
                f"{loud[1] - quiet[1]:.2f} LU ({quiet[0]} {quiet[1]:.2f} to {loud[0]} "
                f"{loud[1]:.2f} LUFS)",
                "≤ 2 LU",
                loud[1] - quiet[1] <= 2.0,
            ),
            Verdict(
                f"each within ±1.5 LU of the target, {self.target_lufs:.0f} LUFS",
                f"worst {off:+.2f} LU ({worst[0]})",
                "±1.5 LU",
                abs(off) <= 1.5,
            ),
            Verdict(
                f"true peak never above {self.ceiling_dbtp:.0f} dBTP",
                "—" if top is None else f"max {top[1]:.2f} dBTP ({top[0]})",
                f"≤ {self.ceiling_dbtp:.0f} dBTP",
                top is not None and top[1] <= self.ceiling_dbtp,
            ),
        ]
        missing = sorted(
            {s.label for s in self.sources if s.problem}
            | {s.label for s in self.sources for h in s.heard if h.lufs is None}
        )
        if missing:
            verdicts.append(Verdict("every source measured", ", ".join(missing), "all", False))
        return verdicts

    def firsts(self) -> list[tuple[Source, Heard]]:
        """Each voice's first announcement: levelled by the prior (not judged)."""
        return [(s, h) for s in self.sources if s.kind == "voice" and (h := s.first) is not None]

    def cut_values(self, name: str) -> list[float]:
        return [v for c in self.cuts if not c.problem and (v := getattr(c, name)) is not None]

    def tail_values(self, tail_ms: int) -> list[float]:
        return [
            t.fraction
            for t in self.tails
            if t.tail_ms == tail_ms and not t.problem and t.fraction is not None
        ]


# --- voices -------------------------------------------------------------------------------------


class Tap:
    """A voice passed through unchanged (same name, so Herald levels and caches it as itself),
    keeping what it said in its last announcement: the source's own level."""

    def __init__(self, inner: Voice) -> None:
        self.inner = inner
        self.name = inner.name
        self.said: list[Samples] = []

    async def stream(self, text: str) -> AsyncGenerator[Samples, None]:
        self.said = []
        async with contextlib.aclosing(self.inner.stream(text)) as chunks:
            async for chunk in chunks:
                self.said.append(chunk.copy())
                yield chunk

    def source_lufs(self) -> float | None:
        return measure(np.concatenate(self.said), RATE).lufs if self.said else None

    async def run(self) -> None:
        await self.inner.run()

    def describe(self) -> str:
        return self.inner.describe()

    async def check(self) -> str:
        return await self.inner.check()

    async def aclose(self) -> None:
        await self.inner.aclose()


async def espeak_audio(espeak: EspeakVoice, text: str) -> Samples:
    return np.concatenate([chunk async for chunk in espeak.stream(text)])


def scaled(audio: Samples, lufs: float) -> Samples:
    """`audio` brought to `lufs` by one gain (clipped where it would pass full scale, as a
    loud vendor's audio would be)."""
    measured = measure(audio, RATE).lufs
    return apply_gain(audio, 1.0 if measured is None else 10 ** ((lufs - measured) / 20))


class ScaledVoice(StubVoice):
    """A vendor at a known level: espeak-ng's speech scaled to `lufs`, in 20 ms pieces."""

    def __init__(self, name: str, espeak: EspeakVoice, lufs: float) -> None:
        self.name = name
        self._espeak = espeak
        self._lufs = lufs

    async def stream(self, text: str) -> AsyncGenerator[Samples, None]:
        audio = scaled(await espeak_audio(self._espeak, text), self._lufs)
        for start in range(0, len(audio), PIECE):
            yield audio[start : start + PIECE]
            await asyncio.sleep(0)


def band_noise(seconds: float, rms: float, seed: int = 6) -> Floats:
    """Noise from 200 Hz to 2 kHz (nothing near the marker), raised-cosine edges."""
    n = round(seconds * RATE)
    spectrum = np.fft.rfft(np.random.default_rng(seed).normal(0, 1, n))
    hz = np.fft.rfftfreq(n, 1 / RATE)
    spectrum[(hz < 200) | (hz > 2000)] = 0
    noise = np.fft.irfft(spectrum, n)
    noise *= rms / np.sqrt(np.mean(noise**2))
    edge = round(0.005 * RATE)
    ramp = 0.5 - 0.5 * np.cos(np.linspace(0, np.pi, edge))
    noise[:edge] *= ramp
    noise[-edge:] *= ramp[::-1]
    return noise


def marker_audio() -> Samples:
    """0.5 s of noise below 2 kHz, then the marker: 50 ms of 3 kHz (1 ms edges)."""
    n = round(MARKER_MS * RATE / 1000)
    burst = np.sin(2 * np.pi * MARKER_HZ * np.arange(n) / RATE) * 0.25 * 32767
    edge = RATE // 1000
    ramp = 0.5 - 0.5 * np.cos(np.linspace(0, np.pi, edge))
    burst[:edge] *= ramp
    burst[-edge:] *= ramp[::-1]
    signal = np.concatenate((band_noise(LEAD_S, 0.08 * 32767), burst))
    return np.round(signal).astype(np.int16)


class MarkerVoice(StubVoice):
    """Says the noise and its 3 kHz marker: the marker is the last 50 ms of what it says."""

    name = "marker"

    def __init__(self) -> None:
        self.audio = marker_audio()

    async def stream(self, text: str) -> AsyncGenerator[Samples, None]:
        for start in range(0, len(self.audio), PIECE):
            yield self.audio[start : start + PIECE]
            await asyncio.sleep(0)


# --- part 6.1: loudness as heard ----------------------------------------------------------------


def write_wav(path: Path, samples: Floats, rate: int) -> Path:
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(np.round(samples).astype("<i2").tobytes())
    return path


def wav_chimes(directory: Path) -> dict[str, str]:
    """A quiet and a loud WAV chime (at 44.1 kHz: Herald resamples them), by file name."""
    rate = 44100
    t = np.arange(round(0.7 * rate)) / rate
    decay = np.exp(-t / 0.18) * np.minimum(t / 0.004, 1.0)
    quiet = (np.sin(2 * np.pi * 698.5 * t) + 0.3 * np.sin(2 * np.pi * 1397 * t)) * decay
    quiet *= 32767 * 10 ** (-30 / 20) / np.max(np.abs(quiet))  # peak -30 dBFS
    t2 = np.arange(round(0.6 * rate)) / rate
    chord = sum(np.sign(np.sin(2 * np.pi * hz * t2)) for hz in (523.25, 659.26, 783.99))
    loud = np.asarray(chord, dtype=np.float64) * np.minimum(t2 / 0.002, 1.0)
    loud *= np.minimum((t2[-1] - t2) / 0.01, 1.0)
    loud *= 32767 * 10 ** (-0.1 / 20) / np.max(np.abs(loud))  # square waves, peak -0.1 dBFS
    write_wav(directory / "quiet.wav", quiet, rate)
    write_wav(directory / "loud.wav", loud, rate)
    return {"quiet.wav": "WAV chime, quiet (peak -30 dBFS)", "loud.wav": "WAV chime, loud"}


class Announcer:
    """Announcements as the daemon parses them, each spoken by a Speaker into a recording."""

    def __init__(self, defaults: Defaults) -> None:
        self._defaults = defaults
        self.events: list[Event] = []
        self._n = 0

    def announcement(self, text: str, chime: str | bool = False) -> Announcement:
        self._n += 1
        payload = {"text": text, "id": f"sound-{self._n}", "chime": chime}
        return parse_payload(json.dumps(payload).encode(), 16384, time.time(), self._defaults)

    async def say(
        self, speaker: Speaker, sink: RecordingSink, text: str, chime: str | bool = False
    ) -> Samples:
        sink.reset()
        self.events.clear()
        spoken = await asyncio.wait_for(
            speaker.speak(self.announcement(text, chime)), SPEAK_TIMEOUT_S
        )
        if not spoken:
            raise RuntimeError(f"not spoken: {self.events[-1] if self.events else '?'}")
        return sink.samples()

    def started_from_cache(self) -> bool:
        return any(e.kind == "started" and e.details.get("cached") for e in self.events)


async def _voice_source(
    source: Source,
    voice: Tap,
    delivery: Delivery,
    announcer: Announcer,
    texts: Sequence[str],
) -> Source:
    sink = RecordingSink()
    speaker = Speaker([voice], sink, announcer.events.append, delivery)
    try:
        async with voices_running([voice]):
            for text in texts:
                heard = measure(await announcer.say(speaker, sink, text), RATE)
                source.heard.append(
                    Heard(text, heard.lufs, heard.true_peak_dbtp, voice.source_lufs())
                )
    except Exception as exc:
        source.problem = f"{type(exc).__name__}: {exc}"
    return source


async def _cached_source(
    root: Path, espeak: EspeakVoice, delivery: Delivery, announcer: Announcer, texts: Sequence[str]
) -> Source:
    engine = "vendor-cached"
    levels = "/".join(f"{v:.0f}" for v in CACHED_LEVELS)
    source = Source("cached phrase", "cached", f"PhraseCache hits, stored at {levels} LUFS")
    cache = PhraseCache(root / "cache", 100_000_000, RATE, {engine: "scaled espeak-ng"})
    stored: dict[str, Samples] = {}
    for k, text in enumerate(texts):
        audio = scaled(await espeak_audio(espeak, text), CACHED_LEVELS[k % len(CACHED_LEVELS)])
        key = cache.key(engine, text)
        assert key is not None
        cache.store(key, audio)
        stored[text] = audio
    sink = RecordingSink()
    voice = ScaledVoice(engine, espeak, -20.0)  # never asked when the cache answers
    speaker = Speaker([CachedVoice(voice, cache)], sink, announcer.events.append, delivery)
    try:
        for text in texts:
            heard = measure(await announcer.say(speaker, sink, text), RATE)
            if not announcer.started_from_cache():
                raise RuntimeError(f"not a cache hit: {text!r}")
            source_lufs = measure(stored[text], RATE).lufs
            source.heard.append(Heard(text, heard.lufs, heard.true_peak_dbtp, source_lufs))
    except Exception as exc:
        source.problem = f"{type(exc).__name__}: {exc}"
    return source


async def _chime_source(
    name: str,
    label: str,
    espeak: EspeakVoice,
    delivery: Delivery,
    announcer: Announcer,
    texts: Sequence[str],
) -> Source:
    source = Source(label, "chime", "built-in" if name in BUILTIN_CHIMES else "WAV file")
    sink = RecordingSink()
    speaker = Speaker([espeak], sink, announcer.events.append, delivery)
    try:
        chime = await delivery.chime_for(announcer.announcement("x", name))
        if chime is None:
            raise RuntimeError(f"no chime {name}")
        for text in texts:
            recorded = await announcer.say(speaker, sink, text, chime=name)
            heard = measure(recorded[: len(chime)], RATE)  # the chime alone
            source.heard.append(
                Heard(text, heard.lufs, heard.true_peak_dbtp, measure(chime, RATE).lufs)
            )
    except Exception as exc:
        source.problem = f"{type(exc).__name__}: {exc}"
    return source


async def _loudness_part(root: Path, settings: Settings, result: SoundResult) -> None:
    chimes_dir = root / "chimes"
    chimes_dir.mkdir(parents=True)
    wavs = wav_chimes(chimes_dir)
    config = Config(state_dir=root / "state", audio=AudioConfig(chimes_dir=chimes_dir))
    delivery = build_delivery(config)
    if delivery.loudness is None:
        raise RuntimeError("no loudness levelling (is libebur128 installed?)")
    result.target_lufs = delivery.loudness.target.lufs
    result.ceiling_dbtp = delivery.loudness.target.ceiling_dbtp
    result.tail_ms = delivery.tail_ms
    announcer = Announcer(announcement_defaults(config))
    texts = TEXTS[: settings.sound_announcements]
    espeak = EspeakVoice(config.voice.espeak, RATE)

    async def voice(label: str, note: str, inner: Voice) -> None:
        source = Source(label, "voice", note)
        result.sources.append(await _voice_source(source, Tap(inner), delivery, announcer, texts))

    log("sound: espeak-ng")
    await voice("espeak-ng", "real", espeak)
    async with FakeDeepgram(FakeDeepgramOptions(first_byte_s=FIRST_BYTE_S)) as deepgram:
        log("sound: Deepgram (fake)")
        dg = DeepgramVoice(DeepgramConfig(url=deepgram.url), "test-key", RATE)
        await voice("Deepgram", "fake: tones", dg)
    async with FakeSlng(FakeSlngOptions(first_byte_s=FIRST_BYTE_S)) as slng:
        log("sound: SLNG (fake)")
        sl = SlngVoice(SlngConfig(url=slng.template_for("bridge")), "slng-test-key", RATE)
        await voice("SLNG", "fake: tones", sl)
    async with FakeGateway(FakeGatewayOptions(first_byte_s=FIRST_BYTE_S)) as gateway:
        log("sound: gateway (fake)")
        await voice("gateway", "fake: tones", GatewayVoice(GatewayConfig(url=gateway.url), RATE))
    for lufs in VENDOR_LEVELS:
        log(f"sound: vendor at {lufs:.0f} LUFS")
        vendor = ScaledVoice(f"vendor{lufs:.0f}", espeak, lufs)
        await voice(f"vendor at {lufs:.0f} LUFS", "espeak-ng scaled", vendor)
    log("sound: cached phrase, chimes")
    result.sources.append(await _cached_source(root, espeak, delivery, announcer, texts))
    chime_texts = texts[: max(1, len(texts) // 2)]
    named = {name: f"chime {name}" for name in BUILTIN_CHIMES} | {
        name: label for name, label in wavs.items()
    }
    for name, label in named.items():
        result.sources.append(
            await _chime_source(name, label, espeak, delivery, announcer, chime_texts)
        )


# --- parts 6.2 and 6.3: on the paced device -----------------------------------------------------


class TeeSink:
    """An AudioSink that plays on another and keeps a copy of what it was given."""

    def __init__(self, inner: AudioSink) -> None:
        self.inner = inner
        self.chunks: list[Samples] = []

    async def open(self) -> None:
        await self.inner.open()

    async def play(self, samples: Samples) -> None:
        self.chunks.append(samples.copy())
        await self.inner.play(samples)

    def place(self, at: float) -> None:
        self.inner.place(at)

    async def finish(self) -> None:
        await self.inner.finish()

    def drop(self) -> None:
        self.inner.drop()

    async def close(self) -> None:
        await self.inner.close()

    def samples(self) -> Samples:
        return np.concatenate(self.chunks) if self.chunks else np.zeros(0, np.int16)


@dataclass
class _Plan:
    """What was played on the device, and where each play begins in the recording."""

    signal: Samples = field(default_factory=lambda: np.zeros(0, np.int16))
    cut_marks: list[int] = field(default_factory=list)
    tail_marks: list[int] = field(default_factory=list)
    tails: list[tuple[int, Samples]] = field(default_factory=list)  # tail_ms, what was written
    end_mark: int = 0
    silent_ms: list[float] = field(default_factory=list)  # the output's log, one per drop


class _SwitchLog(logging.Handler):
    """The output's own line per drop: how long after the drop was asked for it was silent."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.silent_ms: list[float] = []

    def emit(self, record: logging.LogRecord) -> None:
        if found := re.search(r"silent ([\d.]+) ms after the drop", record.getMessage()):
            self.silent_ms.append(float(found[1]))


async def levelled_speech(espeak: EspeakVoice, loudness: Loudness) -> Samples:
    """espeak-ng's speech levelled as the Speaker levels a whole sound (a cached phrase)."""
    levelling = Levelling(loudness, RATE)
    raw = await espeak_audio(espeak, CUT_TEXT)
    return np.concatenate((levelling.push(raw, levelling.gain_of(raw)), levelling.flush()))


async def _play_on_device(
    root: Path, settings: Settings, rng: random.Random, mark: Callable[[], int]
) -> _Plan:
    plan = _Plan()
    config = Config(state_dir=root / "state-device", audio=AudioConfig(device="herald_paced"))
    delivery = build_delivery(config)
    loudness = delivery.loudness or Loudness(Target(), VoiceLevels(None), {})
    plan.signal = await levelled_speech(EspeakVoice(config.voice.espeak, RATE), loudness)
    output = AlsaOutput(config.audio)
    switches = _SwitchLog()
    alsa_log = logging.getLogger(alsa.__name__)
    level = alsa_log.level
    alsa_log.setLevel(logging.INFO)
    alsa_log.addHandler(switches)
    try:
        log(f"sound: {settings.sound_cuts} preemption cuts on herald_paced")
        for _ in range(settings.sound_cuts):
            plan.cut_marks.append(mark())
            await output.open()
            playing = asyncio.create_task(output.play(plan.signal))
            await asyncio.sleep(rng.uniform(*CUT_AFTER_S))
            output.drop()  # as the Speaker does: silence_now(), then the task is cancelled
            playing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await playing
            await asyncio.sleep(GAP_S)
        log(f"sound: {settings.sound_tails} tails with and without tail_ms")
        tee = TeeSink(output)
        announcer = Announcer(announcement_defaults(config))
        for k in range(2 * settings.sound_tails):
            tail_ms = delivery.tail_ms if k % 2 == 0 else 0
            speaker = Speaker(
                [MarkerVoice()], tee, announcer.events.append, replace(delivery, tail_ms=tail_ms)
            )
            plan.tail_marks.append(mark())
            tee.chunks = []
            await announcer.say(speaker, RecordingSink(), "The marker.")  # (sink: unused)
            plan.tails.append((tail_ms, tee.samples()))
            await asyncio.sleep(GAP_S)
        plan.end_mark = mark()
    finally:
        await output.close()
        alsa_log.removeHandler(switches)
        alsa_log.setLevel(level)
    plan.silent_ms = switches.silent_ms
    return plan


def _device_parts(
    ws: Workspace, root: Path, settings: Settings, rng: random.Random, result: SoundResult
) -> None:
    # This process opens ALSA itself: alsa-lib must find the workspace's PCMs (herald_paced).
    before = os.environ.get("XDG_CONFIG_HOME")
    os.environ["XDG_CONFIG_HOME"] = str(ws.config_home)
    pulse = PulseServer(ws.config_home)
    recorder = MonitorRecorder(pulse)
    try:
        pulse.start()
        recorder.start()

        def mark() -> int:
            return recorder.reads[-1][1] if recorder.reads else 0

        plan = asyncio.run(_play_on_device(root, settings, rng, mark))
        time.sleep(0.3)
    finally:
        recorder.stop()
        pulse.stop()
        if before is None:
            os.environ.pop("XDG_CONFIG_HOME", None)
        else:
            os.environ["XDG_CONFIG_HOME"] = before
    recorded = recorder.samples()
    _analyse_cuts(result, plan, recorded)
    _analyse_tails(result, plan, recorded)


def _ncc(haystack: Floats, needle: Floats) -> Floats:
    """Normalised cross-correlation: entry k compares haystack[k : k+len(needle)] with the
    needle (1.0: the same up to a positive gain). Normalised, so that a louder stretch of the
    haystack does not outweigh the one that matches."""
    n = len(needle)
    size = 1 << (len(haystack) + n).bit_length()
    product = np.fft.rfft(haystack, size) * np.conj(np.fft.rfft(needle, size))
    correlation = np.fft.irfft(product, size)[: max(len(haystack) - n + 1, 0)]
    energy = np.concatenate(([0.0], np.cumsum(haystack**2)))
    window = energy[n:] - energy[:-n]
    normalised: Floats = correlation / np.sqrt(np.maximum(window, 1e-9) * np.sum(needle**2))
    return normalised


def _align(segment: Floats, reference: Floats, at: int, length: int) -> int | None:
    """Where reference[0] falls in `segment`, found by reference[at : at+length] (which must
    then match within a few int16 steps); None when it is not there."""
    needle = reference[at : at + length]
    if at < 0 or len(segment) < len(needle) or not needle.any():
        return None
    lag = int(np.argmax(_ncc(segment, needle)))
    if np.max(np.abs(segment[lag : lag + len(needle)] - needle)) > DIFFERS:
        return None
    return lag - at


def _align_before(segment: Floats, reference: Floats, before: int) -> int | None:
    """Where reference[0] falls in `segment`, found by a stretch of the reference shortly
    before its index `before` (a sink can drop a few ms mid-stream: align near what counts)."""
    for back_ms in (250, 400, 600, 900):
        at = before - RATE * back_ms // 1000
        if (start := _align(segment, reference, at, RATE // 10)) is not None:
            return start
    return None


def _segments(marks: Sequence[int], end: int, recorded: Floats) -> list[Floats]:
    bounds = [*marks, end]
    return [recorded[a:b] for a, b in itertools.pairwise(bounds)]


def _max_step(x: Floats) -> float:
    return float(np.max(np.abs(np.diff(x)))) if len(x) > 1 else 0.0


class _StubPcm:
    """Enough of a PCM for `AlsaOutput._drop_with_fade`: `queued` frames are in its buffer."""

    def __init__(self, queued: int, buffer_size: int) -> None:
        self.queued = queued
        self.buffer_size = buffer_size
        self.written: list[bytes] = []

    def avail(self) -> int:
        return self.buffer_size - self.queued

    def info(self) -> dict[str, int]:
        return {"buffer_size": self.buffer_size}

    def drop(self) -> None:
        self.queued = 0

    def write(self, data: memoryview) -> int:
        self.written.append(bytes(data))
        return len(data) // 2


def offline_fade(signal: Samples, at: int) -> Floats:
    """The signal up to `at`, then what the output's own fade makes of it from there: the
    output has written whole periods up to a buffer beyond `at`, and `at` is about to play."""
    cfg = AudioConfig()
    output = AlsaOutput(cfg)
    period = cfg.period_frames
    queued = cfg.periods * period - period // 2
    written_to = min(at + queued, len(signal))
    first = max(written_to - (cfg.periods + 1) * period, 0)
    recent = signal[first:written_to]
    output._recent = deque(  # what the output thread wrote last, period by period
        (recent[i : i + period].astype("<i2").tobytes() for i in range(0, len(recent), period)),
        maxlen=cfg.periods + 1,
    )
    pcm = _StubPcm(written_to - at, cfg.periods * period)
    output._drop_with_fade(pcm)
    faded = np.frombuffer(b"".join(pcm.written), dtype="<i2").astype(np.float64)
    return np.concatenate((signal[:at].astype(np.float64), faded))


def _analyse_cuts(result: SoundResult, plan: _Plan, recorded: Floats) -> None:
    signal = plan.signal.astype(np.float64)
    result.signal_step = _max_step(signal)
    result.signal_lufs = measure(plan.signal, RATE).lufs
    ends = plan.tail_marks[:1] or [plan.end_mark]
    examples: list[tuple[float, CutExample]] = []
    segments = _segments(plan.cut_marks, ends[0], recorded)
    for k, segment in enumerate(segments):
        cut = Cut(silent_ms=plan.silent_ms[k] if k < len(plan.silent_ms) else None)
        result.cuts.append(cut)
        sounding = np.flatnonzero(segment)
        if not sounding.size:
            cut.problem = "nothing in the recording"
            continue
        # Found by what the recording holds shortly before its sound ends: the signal, then
        # the cut. `heard` is the recording on the signal's sample numbers.
        found = _align_before(signal, segment, int(sounding[-1]))
        if found is None:
            cut.problem = "the signal was not found in the recording"
            continue
        shift = found  # signal index = segment index + shift
        heard = np.zeros(len(signal) + RATE // 10)
        lo, hi = max(-shift, 0), min(len(segment), len(heard) - shift)
        heard[lo + shift : hi + shift] = segment[lo:hi]
        end = int(sounding[-1]) + 1 + shift  # the first silent sample after the sound
        checked_from = end - RATE * 250 // 1000
        parted = np.flatnonzero(
            np.abs(heard[checked_from:end] - signal[checked_from:end]) > DIFFERS
        )
        at = checked_from + int(parted[0]) if parted.size else min(end, len(signal) - 1)
        margin = RATE // 1000  # from 1 ms before the parting: the signal's own steps too
        cut.at_ms = at / RATE * 1000
        cut.step = _max_step(heard[at - margin : end + 1])
        cut.hard_step = abs(float(signal[at]))
        cut.fade_ms = (end - at) / RATE * 1000
        cut.on_period = at % AudioConfig().period_frames == 0  # (the signal starts a period)
        offline = np.concatenate((offline_fade(plan.signal, at), np.zeros(1)))
        cut.offline_step = _max_step(offline[at - margin :])
        cut.local_step = _max_step(signal[at - margin : at + RATE * FADE_MS // 1000 + 1])
        window = slice(at - RATE // 100, max(end, at + RATE * FADE_MS // 1000) + RATE // 200)
        examples.append(
            (
                cut.step,
                CutExample(
                    [float(v) for v in heard[window]],
                    [float(v) for v in signal[window]],
                    [float(v) for v in np.pad(offline, (0, len(signal)))[window]],
                    window.start,
                ),
            )
        )
    if examples:
        result.example = max(examples, key=lambda e: e[0])[1]  # the largest step


def _analyse_tails(result: SoundResult, plan: _Plan, recorded: Floats) -> None:
    for (tail_ms, written), segment in zip(
        plan.tails, _segments(plan.tail_marks, plan.end_mark, recorded), strict=True
    ):
        tail = Tail(tail_ms)
        result.tails.append(tail)
        reference = written.astype(np.float64)
        sounding = np.flatnonzero(reference)
        if not sounding.size:
            tail.problem = "nothing was played"
            continue
        marker_end = int(sounding[-1]) + 1
        marker_start = marker_end - RATE * MARKER_MS // 1000
        start = _align_before(segment, reference, marker_start)
        if start is None:
            tail.problem = "the announcement was not found in the recording"
            continue
        window = (marker_start, marker_end + RATE * 30 // 1000)  # the marker and 30 ms after
        want = reference[window[0] : window[1]]
        got = segment[max(start + window[0], 0) : max(start + window[1], 0)]
        tail.fraction = float(np.sum(got**2) / np.sum(want**2))
        heard = np.flatnonzero(segment)
        lost = int(heard[0]) - start - int(sounding[0]) if heard.size else 0
        tail.start_lost_ms = max(lost, 0) / RATE * 1000


# --- the part -----------------------------------------------------------------------------------


def run(ws: Workspace, settings: Settings, rng: random.Random) -> SoundResult:
    began = time.monotonic()
    root = ws.root / "sound"
    root.mkdir()
    result = SoundResult(-18.0, -1.0, 0)
    asyncio.run(_loudness_part(root, settings, result))
    try:
        _device_parts(ws, root, settings, rng, result)
    except Exception as exc:
        log(f"sound: the paced device: {type(exc).__name__}: {exc}")
        result.device_problem = f"{type(exc).__name__}: {exc}"
    result.seconds = time.monotonic() - began
    return result
