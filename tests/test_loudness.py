"""Loudness: the BS.1770 meter (libebur128), the true-peak limiter, and the levelling of
voices and chimes in the Speaker (a recording output; the voices are tones and noise whose
loudness is known, and espeak-ng for the prior Herald ships for it)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator
from pathlib import Path

import numpy as np
import pytest
import soxr
from hypothesis import given, settings
from hypothesis import strategies as st

from herald.announcement import NO_DEFAULTS, parse_payload
from herald.audio.dsp import Samples, keep_awake_tone
from herald.audio.limiter import PeakLimiter
from herald.audio.loudness import PRIORS_LUFS, Loudness, Target, VoiceLevels
from herald.audio.meter import Meter, measure
from herald.config import EspeakConfig
from herald.speaker import Delivery, Speaker
from herald.voice.cache import PhraseCache
from herald.voice.cached import CachedVoice
from herald.voice.espeak import EspeakVoice
from tests.fake_slng import RecordingSink
from tests.test_voice_and_speaker import StubVoice

RATE = 48000


def sine(seconds: float, peak_dbfs: float, hz: float = 997.0, rate: int = RATE) -> Samples:
    t = np.arange(round(seconds * rate)) / rate
    return np.round(np.sin(2 * np.pi * hz * t) * 32767 * 10 ** (peak_dbfs / 20)).astype(np.int16)


def speechlike(seconds: float, rms_dbfs: float, seed: int = 1) -> Samples:
    """Noise shaped into syllables (4 per second), with its own peaks: a stand-in for speech.
    Made at 24 kHz and resampled, like the audio of a streaming TTS service."""
    rng = np.random.default_rng(seed)
    n = round(seconds * RATE / 2)
    envelope = np.clip(np.sin(np.pi * 4 * np.arange(n) / (RATE / 2)), 0, None) ** 2
    noise = soxr.resample(rng.normal(0, 1, n) * envelope, RATE // 2, RATE)
    noise *= 32767 * 10 ** (rms_dbfs / 20) / np.sqrt(np.mean(noise**2))
    speech: Samples = np.clip(np.round(noise), -32768, 32767).astype(np.int16)
    return speech


# --- the meter ------------------------------------------------------------------------------


@pytest.mark.parametrize("rate", [16000, 22050, 24000, 48000])
def test_the_meter_reads_a_997_hz_sine_as_bs1770_says(rate: int) -> None:
    """BS.1770 for one channel: a 997 Hz sine of peak -20 dBFS is -23.0 LUFS (its mean square
    is -23.01 dB; the K-weighting's gain at 997 Hz is +0.69 dB, the -0.691 offset cancels it)."""
    measured = measure(sine(3.0, -20.0, rate=rate), rate)
    assert measured.lufs == pytest.approx(-23.0, abs=0.1)
    assert measured.true_peak_dbtp == pytest.approx(-20.0, abs=0.05)


def test_a_sound_shorter_than_a_gating_block_is_still_measured() -> None:
    """A 250 ms blip has no 400 ms block to gate: it is measured over all of itself."""
    assert measure(sine(0.25, -20.0), RATE).lufs == pytest.approx(-23.0, abs=0.1)


def test_silence_has_no_loudness() -> None:
    assert measure(np.zeros(RATE, dtype=np.int16), RATE).lufs is None
    assert measure(np.zeros(0, dtype=np.int16), RATE).lufs is None


def test_the_meter_fed_in_pieces_reads_what_it_reads_whole() -> None:
    signal = speechlike(4.0, -24.0)
    meter = Meter(RATE)
    for start in range(0, len(signal), 1234):
        meter.add(signal[start : start + 1234])
    assert meter.integrated() == pytest.approx(measure(signal, RATE).lufs, abs=0.05)


# --- the limiter ----------------------------------------------------------------------------


def limited(signal: Samples, gain: float = 1.0, piece: int = 960, ceiling: float = -1.0) -> Samples:
    limiter = PeakLimiter(RATE, ceiling)
    out = [limiter.push(signal[i : i + piece], gain) for i in range(0, len(signal), piece)]
    return np.concatenate([*out, limiter.flush()])


def test_a_signal_under_the_ceiling_passes_unchanged() -> None:
    signal = speechlike(2.0, -30.0)
    assert np.array_equal(limited(signal), signal)


def test_the_worst_inter_sample_peak_is_held_under_the_ceiling() -> None:
    """A sine at a quarter of the rate, sampled 45 degrees off its peaks: the samples read 3 dB
    below the peak the DAC rebuilds. The limiter hears the real one."""
    t = np.arange(RATE) / RATE
    wave = np.round(np.sin(2 * np.pi * RATE / 4 * t + np.pi / 4) * 0.99 * 32767)
    tricky: Samples = wave.astype(np.int16)
    assert (measure(tricky, RATE).true_peak_dbtp or 0) > -0.2  # above the ceiling
    assert (measure(limited(tricky), RATE).true_peak_dbtp or 0) <= -1.0


@settings(max_examples=25, deadline=None)
@given(
    gain_db=st.floats(0.0, 24.0),
    piece=st.integers(32, 5000),
    seed=st.integers(0, 1000),
    ceiling=st.floats(-6.0, -0.5),
)
def test_any_gain_on_any_speech_never_goes_above_the_ceiling(
    gain_db: float, piece: int, seed: int, ceiling: float
) -> None:
    signal = speechlike(1.5, -20.0, seed)
    out = limited(signal, 10 ** (gain_db / 20), piece, ceiling)
    assert len(out) == len(signal)  # nothing lost, nothing added: delayed, then flushed
    assert (measure(out, RATE).true_peak_dbtp or -99) <= ceiling + 0.05


def test_the_limiter_only_touches_the_peaks() -> None:
    """Raised 8 dB, its peaks 2 dB over the ceiling, speech is limited on its peaks only: its
    loudness still rises by nearly 8 LU."""
    signal = speechlike(3.0, -26.0)
    before = measure(signal, RATE)
    assert -1.0 < (before.true_peak_dbtp or 0) + 8 < 4.0
    after = measure(limited(signal, 10 ** (8 / 20)), RATE).lufs or 0
    assert 7.0 <= after - (before.lufs or 0) <= 8.05


# --- the target and what the voices are known to measure ------------------------------------


def test_the_gain_brings_a_sound_to_the_target_within_limits() -> None:
    target = Target(-18.0)
    assert target.gain_for(-24.0) == pytest.approx(2.0, rel=0.01)
    assert target.gain_for(-12.0) == pytest.approx(0.5, rel=0.01)
    assert target.gain_for(None) == 1.0  # silence stays silence
    assert target.gain_for(-90.0) == pytest.approx(10 ** (30 / 20))  # at most +30 dB


def test_a_voice_is_learned_and_the_learning_survives_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "loudness.json"
    levels = VoiceLevels(path)
    assert levels.lufs("deepgram: aura-2", "deepgram") == -20.0  # the prior
    assert levels.lufs("espeak: en-us", "espeak") == PRIORS_LUFS["espeak"]
    levels.learn("deepgram: aura-2", "deepgram", -30.0)
    assert levels.lufs("deepgram: aura-2", "deepgram") == pytest.approx(-30.0)  # the prior goes
    levels.learn("deepgram: aura-2", "deepgram", -20.0)  # one louder sentence moves it some way
    assert levels.lufs("deepgram: aura-2", "deepgram") == pytest.approx(-27.0)

    again = VoiceLevels(path)
    assert again.lufs("deepgram: aura-2", "deepgram") == pytest.approx(-27.0)
    assert again.lufs("deepgram: aura-2-other", "deepgram") == -20.0  # another voice: its own


@pytest.mark.parametrize(
    "content",
    [
        "{",
        "[]",
        '{"voices": {"x": {"lufs": "loud", "heard": 1}}}',
        '{"voices": 3}',
        '{"voices": {"x": {"lufs": -20, "heard": 1e999}}}',  # no int of infinity
        "[" * 100_000 + "]" * 100_000,  # deeper than the JSON parser goes
    ],
)
def test_a_damaged_loudness_file_costs_one_warning_and_the_priors(
    tmp_path: Path, content: str, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "loudness.json"
    path.write_text(content)
    assert VoiceLevels(path).lufs("x", "espeak") == PRIORS_LUFS["espeak"]
    assert len([r for r in caplog.records if "loudness" in r.getMessage()]) == 1


def test_the_cli_reads_the_daemons_loudness_file_but_never_writes_it(tmp_path: Path) -> None:
    path = tmp_path / "loudness.json"
    VoiceLevels(path).learn("v", "gateway", -26.0)
    written = path.read_text()
    reader = VoiceLevels(path, save=False)
    reader.learn("v", "gateway", -10.0)
    assert path.read_text() == written
    assert json.loads(written)["voices"]["v"]["heard"] == 1


def test_memory_of_voices_is_bounded(tmp_path: Path) -> None:
    levels = VoiceLevels(tmp_path / "loudness.json")
    for n in range(100):
        levels.learn(f"voice {n}", "gateway", -25.0)
    kept = json.loads((tmp_path / "loudness.json").read_text())["voices"]
    assert len(kept) <= 32 and "voice 99" in kept and "voice 0" not in kept


# --- in the Speaker -------------------------------------------------------------------------


class LevelVoice(StubVoice):
    """Says every text as 3 s of speech-like noise at a fixed loudness, in 20 ms pieces."""

    def __init__(self, name: str, rms_dbfs: float) -> None:
        self.name = name
        self._audio = speechlike(3.0, rms_dbfs)

    async def stream(self, text: str) -> AsyncGenerator[Samples, None]:
        for start in range(0, len(self._audio), RATE // 50):
            yield self._audio[start : start + RATE // 50]
            await asyncio.sleep(0)


def say(
    speaker: Speaker, sink: RecordingSink, text: str = "Hello there.", **fields: object
) -> Samples:
    payload = json.dumps({"text": text, "chime": False, **fields}).encode()
    announcement = parse_payload(payload, 16384, 0.0, NO_DEFAULTS)
    sink.chunks.clear()
    assert asyncio.run(speaker.speak(announcement))
    return np.concatenate(sink.chunks)


def levelled(tmp_path: Path, **delivery: object) -> Delivery:
    levels = VoiceLevels(tmp_path / "loudness.json")
    return Delivery(RATE, loudness=Loudness(Target(-18.0), levels, {}), **delivery)  # type: ignore[arg-type]


@pytest.mark.parametrize("rms_dbfs", [-36.0, -26.0, -12.0])
def test_a_voice_is_heard_at_the_target_once_it_has_spoken(tmp_path: Path, rms_dbfs: float) -> None:
    """The first announcement is levelled by the prior; from the second on, by what the voice
    measured: within 1 LU of the target, whether the voice is a whisper or a shout."""
    sink = RecordingSink()
    speaker = Speaker([LevelVoice("gateway", rms_dbfs)], sink, lambda _: None, levelled(tmp_path))
    say(speaker, sink)
    heard = [measure(say(speaker, sink), RATE) for _ in range(2)]
    for m in heard:
        assert m.lufs == pytest.approx(-18.0, abs=1.0)
        assert (m.true_peak_dbtp or 0) <= -1.0


def test_the_volume_applies_after_the_loudness(tmp_path: Path) -> None:
    sink = RecordingSink()
    speaker = Speaker([LevelVoice("gateway", -30)], sink, lambda _: None, levelled(tmp_path))
    say(speaker, sink)
    full = measure(say(speaker, sink), RATE).lufs or 0
    half = measure(say(speaker, sink, volume=0.5), RATE).lufs or 0
    assert full - half == pytest.approx(6.0, abs=0.3)


def test_a_cached_phrase_is_levelled_exactly(tmp_path: Path) -> None:
    """Whole audio from the cache is measured and brought to the target the first time."""
    cache = PhraseCache(tmp_path / "cache", 10_000_000, RATE, {"gateway": "v"})
    quiet = speechlike(3.0, -33.0)
    cache.store(cache.key("gateway", "Cached words.") or pytest.fail("no key"), quiet)
    sink = RecordingSink()
    voice = LevelVoice("gateway", -10.0)  # never asked: the cache answers
    speaker = Speaker([CachedVoice(voice, cache)], sink, lambda _: None, levelled(tmp_path))
    heard = say(speaker, sink, "Cached words.")
    assert len(heard) == len(quiet)
    assert measure(heard, RATE).lufs == pytest.approx(-18.0, abs=0.5)


def test_espeak_ngs_prior_is_what_it_measures() -> None:
    """The prior Herald ships for espeak-ng is within 1.5 LU of what its default voice says."""

    async def spoken() -> Samples:
        voice = EspeakVoice(EspeakConfig(), RATE)
        text = "The front door has been open for ten minutes. Please close it."
        return np.concatenate([chunk async for chunk in voice.stream(text)])

    assert measure(asyncio.run(spoken()), RATE).lufs == pytest.approx(
        PRIORS_LUFS["espeak"], abs=1.5
    )


def test_without_a_loudness_target_every_sample_plays_as_the_voice_said_it() -> None:
    sink = RecordingSink()
    voice = LevelVoice("gateway", -30.0)
    speaker = Speaker([voice], sink, lambda _: None, Delivery(RATE))
    assert np.array_equal(say(speaker, sink), voice._audio)


def test_the_tail_is_silence_after_the_last_sound(tmp_path: Path) -> None:
    sink = RecordingSink()
    voice = LevelVoice("gateway", -30.0)
    speaker = Speaker([voice], sink, lambda _: None, Delivery(RATE, tail_ms=250))
    heard = say(speaker, sink)
    assert np.array_equal(heard[: len(voice._audio)], voice._audio)  # every sample, the last too
    assert len(heard) == len(voice._audio) + RATE // 4 and not heard[len(voice._audio) :].any()


def test_the_keep_awake_tone_is_inaudible_but_not_silence() -> None:
    tone = keep_awake_tone(RATE, -50.0)
    assert len(tone) == RATE and np.abs(tone).max() == pytest.approx(32767 * 10**-2.5, abs=1)
    spectrum = np.abs(np.fft.rfft(tone))
    assert np.argmax(spectrum) == 15  # Hz: below hearing, whatever the level
    looped = np.concatenate((tone, tone))
    assert np.abs(np.diff(looped.astype(int))).max() < 20  # loops without a click
