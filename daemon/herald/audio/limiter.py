"""A look-ahead true-peak limiter for a stream of int16 samples (pure numpy, no I/O).

Normalising a voice to a loudness target raises some of it; a word louder than the voice's
usual would then clip. The limiter lowers the gain just before such a peak and lets it back up
afterwards, so the signal's true peak (its peak between the samples too, as a DAC reconstructs
it) stays at or below the ceiling.

How: the signal is cut into blocks of BLOCK_MS. Each block's true peak is estimated from the
samples and three interpolated points between each pair (4x oversampling, a windowed-sinc
interpolator of 24 taps), which gives the gain the block may have at most. The gain at the end
of a block is the lower of what this block and the next one allow (and may rise from the last
block's by at most RELEASE_DB_PER_S); across the block it moves in a straight line from the
previous block's. Both ends are within this block's limit, so every sample of it is. The cost
is a delay of two blocks and a few samples (about 5.5 ms at 48 kHz), paid once per stream.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from herald.audio.dsp import Samples

BLOCK_MS = 2.5
RELEASE_DB_PER_S = 120.0  # how fast the gain comes back after a peak (a 6 dB dip: 50 ms)
OVERSAMPLE = 4
KAISER_BETA = 5.0
# Meters interpolate between samples each in their own way: aim this far below the ceiling so
# that theirs (libebur128's, the benchmark's) reads at or below it too.
MARGIN_DB = 0.15
_BEFORE, _AFTER = 11, 12  # the interpolator's taps before and after the point it estimates
Floats = npt.NDArray[np.float64]


def _interpolators() -> list[Floats]:
    """For each point between two samples (1/4, 2/4, 3/4), the weights of the 24 samples
    around it: a sinc with a Kaiser window centred on the point."""
    taps = np.arange(-_BEFORE, _AFTER + 1)
    half_width = _AFTER + 0.5
    weights = []
    for phase in range(1, OVERSAMPLE):
        distance = taps - phase / OVERSAMPLE
        window = np.i0(KAISER_BETA * np.sqrt(1 - (distance / half_width) ** 2))
        w = np.sinc(distance) * window
        weights.append(w / w.sum())
    return weights


_WEIGHTS = _interpolators()


def true_peaks(signal: Floats) -> Floats:
    """For each sample n in `signal[_BEFORE : len - _AFTER]`, the largest magnitude of the
    signal at n and at the three points between n and n+1."""
    inner = np.abs(signal[_BEFORE : len(signal) - _AFTER])
    for weights in _WEIGHTS:
        between = np.correlate(signal, weights, mode="valid")
        inner = np.maximum(inner, np.abs(between))
    return inner


class PeakLimiter:
    """Feed it with `push`, end the stream with `flush`; the output is the input, delayed by
    `latency` samples, with its true peak at most `ceiling_dbtp`."""

    def __init__(self, rate: int, ceiling_dbtp: float = -1.0) -> None:
        self._block = max(round(rate * BLOCK_MS / 1000), _AFTER + 1)
        self._ceiling = 32768.0 * 10 ** ((ceiling_dbtp - MARGIN_DB) / 20)
        self._rise = 10 ** (RELEASE_DB_PER_S * BLOCK_MS / 1000 / 20)  # per block
        self._signal: Floats = np.zeros(_BEFORE)  # what came before (already out), then new
        self._gain = 1.0
        self._real = 0  # of the samples after the history, how many are input (not padding)

    @property
    def latency(self) -> int:
        return 2 * self._block + _AFTER

    def push(self, samples: Samples, gain: float = 1.0) -> Samples:
        """`samples` times `gain` (any gain: the limiter sees them before they are rounded)."""
        self._signal = np.concatenate((self._signal, samples.astype(np.float64) * gain))
        self._real += len(samples)
        return self._out(self._blocks_ready())

    def flush(self) -> Samples:
        """What is still held back, to the last input sample; the limiter is ready for a new
        stream afterwards."""
        real = self._real
        self._signal = np.concatenate((self._signal, np.zeros(self.latency)))
        out = self._out(-(-real // self._block))  # whole blocks covering every real sample
        out = out[:real]
        self._signal, self._gain, self._real = np.zeros(_BEFORE), 1.0, 0
        return out

    def _blocks_ready(self) -> int:
        """Blocks that can go out: each needs the next block and the interpolator's taps."""
        usable = len(self._signal) - _BEFORE - _AFTER
        return max(usable // self._block - 1, 0)

    def _out(self, blocks: int) -> Samples:
        if blocks <= 0:
            return np.zeros(0, dtype=np.int16)
        b = self._block
        span = self._signal[: _BEFORE + (blocks + 1) * b + _AFTER]
        peaks = true_peaks(span).reshape(blocks + 1, b).max(axis=1)
        allowed = np.minimum(1.0, self._ceiling / np.maximum(peaks, 1e-9))
        ends = np.empty(blocks + 1)
        ends[0] = min(self._gain, allowed[0])  # (lower only at a stream's first block)
        for k in range(blocks):
            ends[k + 1] = min(allowed[k], allowed[k + 1], ends[k] * self._rise, 1.0)
        self._gain = float(ends[-1])
        # Across each block, a straight line from the gain at its start to the one at its end.
        steps = np.arange(1, b + 1) / b
        gains = (ends[:-1, None] + (ends[1:] - ends[:-1])[:, None] * steps[None, :]).ravel()
        body = self._signal[_BEFORE : _BEFORE + blocks * b]
        self._signal = self._signal[blocks * b :]
        self._real = max(self._real - blocks * b, 0)
        out = np.clip(np.round(body * gains), -32768, 32767)
        return out.astype(np.int16)
