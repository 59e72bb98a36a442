"""Chimes heard before an announcement: built-in tones synthesized with numpy, or a WAV file.

A chime is mono int16 at the output rate, like every other sound in Herald. Built-in chimes
are computed (no binary assets) and cached per rate; WAV files are decoded with the stdlib
`wave` module, mixed down to mono, resampled with soxr and cached until the file changes.
Every returned array is read-only because it is shared between announcements.

Which names may be given is decided in `herald.chime_names`, without opening anything; here
a WAV file a payload named must also lie in the chimes directory once symbolic links and `..`
are resolved, and must be small enough to be a chime before it is read. The daemon loads
chimes with `load_chime_async`, which stats and decodes in a worker thread: a file on a slow
card or a large one never holds up the event loop.
"""

from __future__ import annotations

import asyncio
import functools
import io
import os
import stat
import struct
import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import soxr

from herald.audio.dsp import Samples
from herald.chime_names import (
    BUILTIN_CHIMES,
    looks_like_path,
    payload_chime,
    relative_chime,
    unknown_chime,
)
from herald.logsafe import shown

Floats = npt.NDArray[np.float64]

MAX_SECONDS = 10.0
FULL_SCALE = 32767

C5, E5, G5 = 523.25, 659.26, 783.99
A5, CS6, E6 = 880.0, 1108.73, 1318.51


class ChimeError(Exception):
    """A chime cannot be used: the message names the chime and says why, on one line."""


@dataclass(frozen=True)
class _Voice:
    """How every tone of one chime sounds."""

    level: float  # peak of the whole chime, as a fraction of full scale
    partials: tuple[tuple[float, float], ...]  # (multiple of the note's frequency, amplitude)
    attack: float  # seconds of raised-cosine rise from silence
    decay: float  # time constant of the exponential decay, seconds
    release: float  # seconds of raised-cosine fall to silence at the end of each tone


@dataclass(frozen=True)
class _Note:
    hz: float
    start: float  # seconds from the start of the chime
    length: float  # seconds, release included


@dataclass(frozen=True)
class _Design:
    voice: _Voice
    notes: tuple[_Note, ...]
    length: float  # seconds


_DESIGNS: dict[str, _Design] = {
    # A gentle descending major third, E5 then C5, overlapping like a struck chime.
    "soft": _Design(
        _Voice(level=0.35, partials=((1, 1.0), (2, 0.12)), attack=0.005, decay=0.07, release=0.03),
        (_Note(E5, 0.0, 0.20), _Note(C5, 0.12, 0.23)),
        0.35,
    ),
    # A doorbell's G5-E5-C5 ding-dong, brighter from its second and third partials.
    "bell": _Design(
        _Voice(
            level=0.5,
            partials=((1, 1.0), (2, 0.35), (3, 0.12)),
            attack=0.002,
            decay=0.09,
            release=0.03,
        ),
        (_Note(G5, 0.0, 0.22), _Note(E5, 0.14, 0.22), _Note(C5, 0.28, 0.22)),
        0.5,
    ),
    # Three quick beeps rising through an A major triad.
    "alert": _Design(
        _Voice(level=0.6, partials=((1, 1.0), (2, 0.2)), attack=0.003, decay=0.3, release=0.02),
        (_Note(A5, 0.0, 0.11), _Note(CS6, 0.17, 0.11), _Note(E6, 0.34, 0.11)),
        0.45,
    ),
    # A siren-like 960/770 Hz two-tone, four times over; the odd partial makes it urgent.
    "alarm": _Design(
        _Voice(level=0.7, partials=((1, 1.0), (3, 0.18)), attack=0.003, decay=0.5, release=0.015),
        tuple(_Note(960.0 if i % 2 == 0 else 770.0, i * 0.1, 0.1) for i in range(8)),
        0.8,
    ),
}

assert tuple(_DESIGNS) == BUILTIN_CHIMES, "herald.chime_names lists the chimes designed here"


def load_chime(spec: str, rate: int, within: Path | None = None) -> Samples:
    """The chime named by `spec` at `rate`.

    Without `within` (a chime from the config), `spec` is a built-in name or the absolute path
    of any WAV file. With `within` (a chime a payload named), it is a built-in name or a WAV
    file in that directory, by its file name or absolute path (`payload_chime`), and the file
    must still be inside the directory once symbolic links and `..` are resolved. Results are
    cached and read-only. Blocks on the file: the daemon calls `load_chime_async`. Raises
    ChimeError naming the chime as given (escaped, on one line) and the problem.
    """
    if spec in _DESIGNS:
        return _builtin(spec, rate)
    try:
        path = spec if within is None else payload_chime(spec, within)
    except ValueError as exc:
        raise ChimeError(str(exc)) from None
    real = _real_path(path, spec)
    if within is not None and not Path(real).is_relative_to(os.path.realpath(within)):
        raise ChimeError(
            f"chime '{shown(spec)}': leads out of the chimes directory {shown(str(within))} "
            "(a symbolic link or '..')"
        )
    info = _stat_wav(real, spec)
    if info.st_size > MAX_FILE_BYTES:  # refused by its size, before a byte of it is read
        raise ChimeError(f"chime '{shown(spec)}': {_too_large()}")
    try:
        return _wav(real, info.st_mtime_ns, info.st_size, rate)
    except _Unusable as exc:
        raise ChimeError(f"chime '{shown(spec)}': {exc}") from None


async def load_chime_async(spec: str, rate: int, within: Path | None = None) -> Samples:
    """`load_chime` with a WAV file's stat and decoding in a worker thread, off the event loop.

    A built-in chime is synthesized on the loop (a few milliseconds, once per rate; then a
    cache hit), so the usual chime costs no thread hop before the first sound.
    """
    if spec in _DESIGNS:
        return _builtin(spec, rate)
    return await asyncio.to_thread(load_chime, spec, rate, within)


def _read_only(samples: Samples) -> Samples:
    """Mark an array read-only, so a cached chime cannot be changed by one of its users."""
    samples.setflags(write=False)
    return samples


def _to_int16(signal: Floats) -> Samples:
    """Round and clip a signal in int16 units to int16."""
    return np.clip(np.round(signal), -32768, 32767).astype(np.int16)


# --- built-in chimes ---------------------------------------------------------------------------


@functools.lru_cache(maxsize=32)
def _builtin(name: str, rate: int) -> Samples:
    """Synthesize the built-in chime `name` at `rate`, once per (name, rate)."""
    return _read_only(_synthesize(_DESIGNS[name], rate))


def _synthesize(design: _Design, rate: int) -> Samples:
    """Mix a design's notes and scale the result to its voice's peak level."""
    mix = np.zeros(round(design.length * rate), dtype=np.float64)
    for note in design.notes:
        start = round(note.start * rate)
        tone = _tone(note.hz, round(note.length * rate), rate, design.voice)
        tone = tone[: len(mix) - start]
        mix[start : start + len(tone)] += tone
    top = float(np.max(np.abs(mix)))
    return _to_int16(mix * (design.voice.level * FULL_SCALE / top))


def _tone(hz: float, frames: int, rate: int, voice: _Voice) -> Floats:
    """One enveloped note: the voice's partials of `hz`, starting and ending at exactly 0."""
    phase = 2 * np.pi * hz * np.arange(frames) / rate
    partials = [amp * np.sin(multiple * phase) for multiple, amp in voice.partials]
    mixed: Floats = np.sum(partials, axis=0) * _envelope(frames, rate, voice)
    return mixed


def _envelope(frames: int, rate: int, voice: _Voice) -> Floats:
    """Raised-cosine attack, exponential decay, raised-cosine release; 0 at both ends."""
    env = np.exp(-np.arange(frames) / (voice.decay * rate))
    attack = min(max(round(voice.attack * rate), 1), frames)
    env[:attack] *= 0.5 * (1.0 - np.cos(np.pi * np.arange(attack) / attack))
    release = min(max(round(voice.release * rate), 2), frames)
    env[frames - release :] *= 0.5 * (1.0 + np.cos(np.linspace(0.0, np.pi, release)))
    return env


# --- WAV files ---------------------------------------------------------------------------------


class _Unusable(Exception):
    """A WAV file that cannot be a chime; the message is the reason without the chime's name."""


_FORMAT_REASONS = {"unknown format: 3": "floating-point samples; save it as integer PCM"}
WAVE_FORMAT_PCM = 0x0001
WAVE_FORMAT_EXTENSIBLE = 0xFFFE
# KSDATAFORMAT_SUBTYPE_PCM, the sub-format GUID of an extensible header over integer samples.
PCM_SUBFORMAT = bytes.fromhex("0100000000001000800000aa00389b71")
# A chime lasts at most MAX_SECONDS: 10 s of 48 kHz stereo 32-bit PCM is 3.84 MB (24-bit:
# 2.88 MB; 16-bit: 1.92 MB), so 4 MiB holds any of them with ~350 KB to spare for metadata
# chunks. A 10 s file at 96 kHz or more, or with more channels, must be converted first.
# Decoding takes about ten times the file's size in memory: 40 MB at most, even on a Pi Zero.
MAX_FILE_BYTES = 4 * 1024 * 1024


def _real_path(path: str, spec: str) -> str:
    """`path` with every symbolic link and `..` resolved, or ChimeError (naming `spec`) if it
    is no absolute path."""
    if not Path(path).is_absolute():
        raise ChimeError(relative_chime(spec) if looks_like_path(spec) else unknown_chime(spec))
    try:
        return os.path.realpath(path)
    except ValueError:  # a NUL byte
        raise ChimeError(unknown_chime(spec)) from None


def _stat_wav(real: str, spec: str) -> os.stat_result:
    """The stat of the file at `real`, or ChimeError (naming `spec`) if it is no usable file."""
    try:
        info = os.stat(real)
    except (FileNotFoundError, NotADirectoryError, ValueError):
        raise ChimeError(unknown_chime(spec)) from None
    except OSError as exc:
        raise ChimeError(f"chime '{shown(spec)}': not a PCM WAV file ({exc.strerror})") from None
    if not stat.S_ISREG(info.st_mode):
        raise ChimeError(unknown_chime(spec))
    return info


def _too_large() -> str:
    return f"larger than {MAX_FILE_BYTES // 2**20} MiB; chimes are short sounds"


@functools.lru_cache(maxsize=16)
def _wav(path: str, mtime_ns: int, size: int, rate: int) -> Samples:
    """Decode the WAV file at `path` to mono at `rate`, once per (path, mtime, size, rate).

    `mtime_ns` and `size` are only part of the cache key: a changed file is read again.
    """
    signal, file_rate = _read_wav(path)
    if file_rate != rate and len(signal):
        signal = soxr.resample(signal, file_rate, rate, "HQ")
    return _read_only(_to_int16(signal))


def _read_wav(path: str) -> tuple[Floats, int]:
    """The file's samples mixed down to mono in int16 units, and its frame rate."""
    try:
        with wave.open(io.BytesIO(_plain_pcm_header(_read_bytes(path))), "rb") as wav:
            channels, width, file_rate, frames = (
                wav.getnchannels(),
                wav.getsampwidth(),
                wav.getframerate(),
                wav.getnframes(),
            )
            _check_format(width, file_rate, frames)
            raw = wav.readframes(frames)
    except wave.Error as exc:
        reason = _FORMAT_REASONS.get(str(exc), str(exc))
        raise _Unusable(f"not a PCM WAV file ({reason})") from None
    except EOFError:
        raise _Unusable("not a PCM WAV file (the file ends inside its header)") from None
    except OSError as exc:
        raise _Unusable(f"not a PCM WAV file ({exc.strerror or exc})") from None
    return _mono(raw, width, channels), file_rate


def _read_bytes(path: str) -> bytes:
    """At most MAX_FILE_BYTES of the file: one that grew since its stat is still refused."""
    with open(path, "rb") as file:
        data = file.read(MAX_FILE_BYTES + 1)
    if len(data) > MAX_FILE_BYTES:
        raise _Unusable(_too_large())
    return data


def _plain_pcm_header(data: bytes) -> bytes:
    """The file with an extensible header over integer PCM rewritten as a plain PCM header.

    Audio editors write WAVE_FORMAT_EXTENSIBLE for 24-bit and multichannel files. The `wave`
    module of Python 3.11 refuses that header and 3.12 reads it; rewriting the format tag (the
    rest of the chunk is skipped) gives the same samples on every Python. An extensible header
    over anything but integer PCM (floating point, compressed) is refused, naming it.
    """
    at = 12  # after "RIFF", its size, "WAVE"
    while at + 10 <= len(data):
        chunk, size = data[at : at + 4], struct.unpack_from("<L", data, at + 4)[0]
        if chunk == b"fmt ":
            if struct.unpack_from("<H", data, at + 8)[0] != WAVE_FORMAT_EXTENSIBLE:
                return data
            subformat = data[at + 32 : at + 48]
            if size < 40 or subformat != PCM_SUBFORMAT:
                raise _Unusable(
                    "not a PCM WAV file (WAVE_FORMAT_EXTENSIBLE over samples that are not "
                    "integer PCM; save it as 16-bit PCM)"
                )
            tag = struct.pack("<H", WAVE_FORMAT_PCM)
            return data[: at + 8] + tag + data[at + 10 :]
        at += 8 + size + (size & 1)
    return data


def _check_format(width: int, file_rate: int, frames: int) -> None:
    """Raise _Unusable for sample widths Herald does not decode, or a file over 10 s."""
    if width not in (1, 2, 3, 4):
        raise _Unusable(f"not a PCM WAV file ({8 * width}-bit samples are not supported)")
    if file_rate <= 0:
        raise _Unusable("not a PCM WAV file (frame rate 0)")
    seconds = frames / file_rate
    if seconds > MAX_SECONDS:
        raise _Unusable(f"{seconds:.1f} s long; chimes may be at most {MAX_SECONDS:g} s")


def _mono(raw: bytes, width: int, channels: int) -> Floats:
    """Interleaved PCM frames as one channel (the mean of all), scaled to int16 units."""
    usable = len(raw) - len(raw) % (width * channels)
    values = _integers(raw[:usable], width).astype(np.float64) * 2.0 ** (16 - 8 * width)
    mono: Floats = values.reshape(-1, channels).mean(axis=1)
    return mono


def _integers(data: bytes, width: int) -> npt.NDArray[np.int64]:
    """Little-endian PCM samples of `width` bytes as signed integers (8-bit is unsigned)."""
    if width == 1:
        return np.frombuffer(data, dtype=np.uint8).astype(np.int64) - 128
    if width == 3:
        octets = np.frombuffer(data, dtype=np.uint8).reshape(-1, 3).astype(np.int64)
        unsigned = octets[:, 0] | octets[:, 1] << 8 | octets[:, 2] << 16
        return unsigned - ((unsigned >> 23) << 24)
    return np.frombuffer(data, dtype=f"<i{width}").astype(np.int64)
