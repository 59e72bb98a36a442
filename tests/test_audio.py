"""The ALSA output thread through real alsa-lib: a file-backed PCM, and a paced PulseAudio one."""

from __future__ import annotations

import asyncio
import logging
import re
from pathlib import Path

import numpy as np
import pytest

from herald.audio import AudioError
from herald.audio.alsa import AlsaOutput, playback_devices
from herald.audio.dsp import StreamResampler, upmix
from herald.config import AudioConfig
from tests.support import RATE, Capture, PulseServer


def tone(seconds: float, hz: float = 440, rate: int = RATE) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (np.sin(2 * np.pi * hz * t) * 8000).astype(np.int16)


async def play_all(output: AlsaOutput, *chunks: np.ndarray) -> None:
    await output.open()
    try:
        for chunk in chunks:
            await output.play(chunk)
        await output.finish()
    finally:
        await output.close()


def test_every_sample_reaches_the_device_in_order(capture: Capture) -> None:
    signal = tone(0.5)
    odd_chunks = np.array_split(signal, [100, 1337, 5000, 17_000])
    asyncio.run(play_all(AlsaOutput(AudioConfig(device=capture.device)), *odd_chunks))

    played = capture.samples()
    period = AudioConfig().period_frames
    assert len(played) == -(-len(signal) // period) * period  # rounded up to whole periods
    assert np.array_equal(played[: len(signal)], signal)
    assert not played[len(signal) :].any()  # the padding is silence


def test_mono_is_copied_to_every_device_channel(capture: Capture) -> None:
    signal = tone(0.1)
    asyncio.run(play_all(AlsaOutput(AudioConfig(device=capture.device, channels=2)), signal))
    frames = capture.samples().reshape(-1, 2)
    assert np.array_equal(frames[: len(signal), 0], signal)
    assert np.array_equal(frames[:, 0], frames[:, 1])


def open_missing_device() -> None:
    """Open (and close) a PCM that alsa-lib does not know: raises its AudioError."""
    output = AlsaOutput(AudioConfig(device="no_such_pcm"))

    async def open_it() -> None:
        try:
            await output.open()
        finally:
            await output.close()

    asyncio.run(open_it())


def test_a_missing_device_is_named_in_the_error() -> None:
    with pytest.raises(AudioError, match=r"^cannot open ALSA device 'no_such_pcm': "):
        open_missing_device()


def test_alsa_lib_errors_go_to_the_debug_log_not_to_stderr(
    capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    with (
        caplog.at_level(logging.DEBUG, logger="herald.audio.alsa"),
        pytest.raises(AudioError, match="cannot open ALSA device 'no_such_pcm'"),
    ):
        open_missing_device()
    assert "ALSA lib" not in capfd.readouterr().err
    routed = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG]
    assert any(
        re.match(r"alsa-lib pcm\.c:\d+ \(snd_pcm_open_noupdate\) Unknown PCM", m) for m in routed
    ), routed


def test_the_test_pcms_are_listed_as_playback_devices() -> None:
    assert {"herald_capture", "herald_paced", "null"} <= set(playback_devices())


def test_an_underrun_is_recovered_and_playback_goes_on(pulse: PulseServer, tmp_path: Path) -> None:
    output = AlsaOutput(AudioConfig(device="herald_paced"))

    async def with_a_pause() -> None:
        await output.open()
        await output.play(tone(0.3, 440))
        await asyncio.sleep(0.6)  # the producer stalls: the 80 ms buffer runs dry
        await output.play(tone(0.3, 880))
        await output.finish()
        await output.close()

    with pulse.record(tmp_path / "heard.raw") as recording:
        asyncio.run(with_a_pause())
    assert output.underruns >= 1
    heard = np.frombuffer(recording.read_bytes(), dtype="<i2")
    spectrum = np.abs(np.fft.rfft(heard.astype(np.float64)))
    freqs = np.fft.rfftfreq(len(heard), 1 / RATE)
    # Both halves were heard: energy at 880 Hz as well as at 440 Hz.
    assert spectrum[np.abs(freqs - 880) < 5].max() > 0.3 * spectrum[np.abs(freqs - 440) < 5].max()


def test_upmix_interleaves() -> None:
    mono = np.array([1, 2, 3], dtype=np.int16)
    assert upmix(mono, 1) is mono
    assert upmix(mono, 3).tolist() == [1, 1, 1, 2, 2, 2, 3, 3, 3]


@pytest.mark.parametrize(("source", "target"), [(22050, 48000), (24000, 48000), (48000, 16000)])
def test_streaming_resampler_keeps_duration(source: int, target: int) -> None:
    resampler = StreamResampler(source, target)
    signal = tone(1.0, rate=source)
    out = np.concatenate(
        [resampler.push(c) for c in np.array_split(signal, 7)] + [resampler.flush()]
    )
    assert abs(len(out) - target) <= 2
    assert out.dtype == np.int16


def test_resampler_is_a_no_op_at_the_same_rate() -> None:
    signal = tone(0.1)
    resampler = StreamResampler(RATE, RATE)
    assert resampler.push(signal) is signal
    assert len(resampler.flush()) == 0
