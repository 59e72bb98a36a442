"""The loudness meter: ITU-R BS.1770-4 / EBU R128 loudness and true peak, by libebur128.

libebur128 is the meter ffmpeg (`ebur128`), mpv, GStreamer and PipeWire's tools use; Debian
ships it as `libebur128-1` (bookworm and trixie). It is called through ctypes: no compiler, no
wheel to build on a Pi. Mono signals are measured as one (left) channel, as BS.1770 defines
for a single loudspeaker: a 997 Hz sine of peak -20 dBFS reads -23.0 LUFS.

Integrated loudness is gated over 400 ms blocks, so a sound shorter than a block (most chimes
are 0.3-0.8 s) has no gated value: `Meter.loudness()` then gives the K-weighted loudness over
the whole sound (BS.1770's measure without the gate), which is what a listener hears of a blip.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import math
from typing import NamedTuple

import numpy as np

from herald.audio.dsp import Samples

_MODE_I = (1 << 2) | (1 << 0)  # EBUR128_MODE_I
_MODE_TRUE_PEAK = (1 << 5) | (1 << 4) | (1 << 0)
_MODE_HISTOGRAM = 1 << 6  # gating from a histogram: memory does not grow with the duration
_SUCCESS = 0
GATE_BLOCK_MS = 400  # (also the longest window libebur128 keeps in this mode)


class MeterUnavailable(Exception):
    """libebur128 is not installed (Debian: `apt install libebur128-1`)."""


class Measurement(NamedTuple):
    lufs: float | None  # None: silence, or too little of the sound to measure
    true_peak_dbtp: float | None


_lib: ctypes.CDLL | None = None


def _library() -> ctypes.CDLL:
    global _lib
    if _lib is None:
        name = ctypes.util.find_library("ebur128") or "libebur128.so.1"
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            raise MeterUnavailable(
                "libebur128 is not installed (apt install libebur128-1); "
                "set audio.loudness_lufs = 0 to play every sound at its own level"
            ) from None
        lib.ebur128_init.restype = ctypes.c_void_p
        lib.ebur128_init.argtypes = [ctypes.c_uint, ctypes.c_ulong, ctypes.c_int]
        lib.ebur128_destroy.argtypes = [ctypes.POINTER(ctypes.c_void_p)]
        lib.ebur128_add_frames_short.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t]
        lib.ebur128_loudness_global.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_double)]
        lib.ebur128_loudness_window.argtypes = [
            ctypes.c_void_p,
            ctypes.c_ulong,
            ctypes.POINTER(ctypes.c_double),
        ]
        lib.ebur128_true_peak.argtypes = [
            ctypes.c_void_p,
            ctypes.c_uint,
            ctypes.POINTER(ctypes.c_double),
        ]
        _lib = lib
    return _lib


def check_meter() -> None:
    """Raise MeterUnavailable if the meter cannot be loaded."""
    _library()


class Meter:
    """One mono signal, fed in pieces; its loudness and true peak so far."""

    def __init__(self, rate: int, true_peak: bool = False) -> None:
        self._lib = _library()
        mode = _MODE_I | _MODE_HISTOGRAM | (_MODE_TRUE_PEAK if true_peak else 0)
        state = self._lib.ebur128_init(1, rate, mode)
        if not state:
            raise MemoryError("libebur128 could not start a meter")
        self._state = ctypes.c_void_p(state)
        self._rate = rate
        self._frames = 0

    def __del__(self) -> None:
        state = getattr(self, "_state", None)
        if state is not None and state.value:
            self._lib.ebur128_destroy(ctypes.byref(state))

    @property
    def seconds(self) -> float:
        return self._frames / self._rate

    def add(self, samples: Samples) -> None:
        if not len(samples):
            return
        data = np.ascontiguousarray(samples, dtype=np.int16)
        self._lib.ebur128_add_frames_short(self._state, data.ctypes.data, len(data))
        self._frames += len(data)

    def integrated(self) -> float | None:
        """Gated integrated loudness (LUFS); None before a whole 400 ms block, or in silence."""
        out = ctypes.c_double()
        if self._lib.ebur128_loudness_global(self._state, ctypes.byref(out)) != _SUCCESS:
            return None
        return out.value if math.isfinite(out.value) else None

    def loudness(self) -> float | None:
        """Integrated loudness; for a sound shorter than a gating block, the ungated loudness
        over all of it. None for silence."""
        gated = self.integrated()
        window_ms = math.ceil(self._frames * 1000 / self._rate)
        if gated is not None or not 0 < window_ms < GATE_BLOCK_MS:
            return gated
        out = ctypes.c_double()
        if self._lib.ebur128_loudness_window(self._state, window_ms, ctypes.byref(out)):
            return None
        return out.value if math.isfinite(out.value) else None

    def true_peak_dbtp(self) -> float | None:
        """The true peak so far in dBTP (only for a meter made with true_peak=True)."""
        out = ctypes.c_double()
        if self._lib.ebur128_true_peak(self._state, 0, ctypes.byref(out)) != _SUCCESS:
            return None
        return 20 * math.log10(out.value) if out.value > 0 else None


def measure(samples: Samples, rate: int) -> Measurement:
    """The loudness and true peak of a whole sound."""
    meter = Meter(rate, true_peak=True)
    meter.add(samples)
    return Measurement(meter.loudness(), meter.true_peak_dbtp())
