"""Sample arithmetic: int16 PCM as numpy arrays, channel upmix, streaming resampling (soxr)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import soxr

Samples = npt.NDArray[np.int16]


def pcm16(data: bytes) -> Samples:
    """Little-endian signed 16-bit PCM bytes as an int16 array (a trailing odd byte is dropped)."""
    usable = len(data) - len(data) % 2
    return np.frombuffer(data[:usable], dtype="<i2").astype(np.int16, copy=False)


def silence(frames: int) -> Samples:
    return np.zeros(frames, dtype=np.int16)


def upmix(mono: Samples, channels: int) -> Samples:
    """Interleave one mono signal into `channels` identical channels."""
    if channels == 1:
        return mono
    return np.repeat(mono, channels)


def peak(samples: Samples) -> int:
    """The largest absolute sample value (0 for no samples)."""
    if samples.size == 0:
        return 0
    return int(np.max(np.abs(samples.astype(np.int32))))


class StreamResampler:
    """Resamples a mono int16 stream chunk by chunk; a no-op when the rates match."""

    def __init__(self, in_rate: int, out_rate: int) -> None:
        self._stream = (
            None if in_rate == out_rate else soxr.ResampleStream(in_rate, out_rate, 1, "int16")
        )

    def push(self, samples: Samples) -> Samples:
        if self._stream is None:
            return samples
        out: Samples = self._stream.resample_chunk(samples)
        return out

    def flush(self) -> Samples:
        """The samples soxr still holds back; call once, after the last push."""
        if self._stream is None:
            return silence(0)
        out: Samples = self._stream.resample_chunk(silence(0), last=True)
        return out


def apply_gain(samples: Samples, gain: float) -> Samples:
    """Scale samples by `gain` (>= 0), rounding to the nearest value and clipping to int16.

    A gain of exactly 1.0 returns `samples` itself, not a copy.
    """
    if not (np.isfinite(gain) and gain >= 0.0):
        raise ValueError(f"gain must be a finite number >= 0, not {gain}")
    if gain == 1.0:
        return samples
    scaled = np.round(samples.astype(np.float64) * gain)
    return np.clip(scaled, -32768, 32767).astype(np.int16)


def fade_out(samples: Samples) -> Samples:
    """Fade samples to silence with a raised-cosine ramp from 1 (first sample) to 0 (last).

    Used for the few milliseconds played before audio is dropped, so the cut does not click.
    A single sample fades straight to 0.
    """
    frames = len(samples)
    if frames <= 1:
        return np.zeros(frames, dtype=np.int16)
    ramp = 0.5 * (1.0 + np.cos(np.linspace(0.0, np.pi, frames)))
    return np.round(samples.astype(np.float64) * ramp).astype(np.int16)


def ms_to_frames(ms: float, rate: int) -> int:
    """The number of frames closest to `ms` milliseconds at `rate` frames per second."""
    return round(ms * rate / 1000)


KEEP_AWAKE_HZ = 15  # far below hearing at any level a speaker can play it; not digital silence


def keep_awake_tone(rate: int, dbfs: float) -> Samples:
    """One second of a KEEP_AWAKE_HZ sine at `dbfs` (a whole number of cycles: it loops)."""
    t = np.arange(rate) / rate
    amplitude = 32767 * 10 ** (dbfs / 20)
    tone: Samples = np.round(amplitude * np.sin(2 * np.pi * KEEP_AWAKE_HZ * t)).astype(np.int16)
    tone.setflags(write=False)
    return tone
