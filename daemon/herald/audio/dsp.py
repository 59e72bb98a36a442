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
