"""Chimes: built-in tones as sound (length, level, clicks, notes), WAV files, which files a
payload may name and how they are loaded (in a thread, by size first), DSP helpers."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
import struct
import threading
import time
import wave
from collections.abc import AsyncGenerator
from pathlib import Path, PurePath
from typing import Any, ClassVar

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from herald.announcement import Announcement, Defaults, PayloadRejected, parse_payload
from herald.app import announcement_defaults, build_delivery, chime_resolver
from herald.audio import chimes
from herald.audio.chimes import MAX_FILE_BYTES, ChimeError, load_chime
from herald.audio.dsp import Samples, apply_gain, fade_out, ms_to_frames
from herald.audio.meter import measure
from herald.audio.wav import WavFileOutput
from herald.chime_names import BUILTIN_CHIMES, payload_chime, validate_chime_spec
from herald.config import AudioConfig, Config, LevelConfig, PrioritiesConfig
from herald.logsafe import shown
from herald.speaker import Speaker
from tests.test_voice_and_speaker import StubVoice

FULL = 32767
RATES = (16000, 44100, 48000)
C5, E5, G5, A5, CS6, E6 = 523.25, 659.26, 783.99, 880.0, 1108.73, 1318.51

# name: (nominal seconds, peak level, notes in the order heard, highest partial in Hz)
SPEC: dict[str, tuple[float, float, tuple[float, ...], float]] = {
    "soft": (0.35, 0.35, (E5, C5), 2 * E5),
    "bell": (0.5, 0.5, (G5, E5, C5), 3 * G5),
    "alert": (0.45, 0.6, (A5, CS6, E6), 2 * E6),
    "alarm": (0.8, 0.7, (960.0, 770.0), 3 * 960.0),
}
UNKNOWN = "not a built-in chime (soft, bell, alert, alarm) nor a WAV file"


def strongest_frequencies(x: np.ndarray, rate: int, count: int) -> list[float]:
    """The `count` strongest spectral peaks, each at least 60 Hz from the others, ascending."""
    size = 1 << (len(x) * 8 - 1).bit_length()  # zero-padded: bins a fraction of a hertz apart
    magnitude = np.abs(np.fft.rfft(x.astype(np.float64), size))
    freqs = np.fft.rfftfreq(size, 1 / rate)
    found = []
    for _ in range(count):
        best = float(freqs[int(np.argmax(magnitude))])
        found.append(best)
        magnitude[np.abs(freqs - best) < 60] = 0  # the peak's own lobe and sidebands
    return sorted(found)


def splatter_db(x: np.ndarray, rate: int, above: float) -> float:
    """The energy more than 1 kHz above `above` Hz, in dB relative to all energy.

    Smooth tones keep this near -80 dB; a click (any jump) spreads energy across the band.
    """
    power = np.abs(np.fft.rfft(x.astype(np.float64))) ** 2
    freqs = np.fft.rfftfreq(len(x), 1 / rate)
    return float(10 * np.log10(float(power[freqs > above + 1000].sum()) / float(power.sum())))


def sine(seconds: float, rate: int, hz: float = 1000.0, level: float = 0.5) -> np.ndarray:
    t = np.arange(round(seconds * rate)) / rate
    return np.round(np.sin(2 * np.pi * hz * t) * level * FULL).astype(np.int16)


def to_width(x: np.ndarray, width: int) -> np.ndarray:
    """int16 samples as integers of a `width`-byte PCM sample (8-bit keeps the top byte)."""
    wide = x.astype(np.int64)
    return wide >> 8 if width == 1 else wide << (8 * width - 16)


def write_wav(path: Path, frames: np.ndarray, width: int, rate: int) -> Path:
    """Write integers of `width` bytes (shape (n,) or (n, channels)) as a PCM WAV file."""
    channels = 1 if frames.ndim == 1 else frames.shape[1]
    flat = frames.reshape(-1).astype(np.int64)
    if width == 1:
        data = (flat + 128).astype(np.uint8).tobytes()
    elif width == 3:
        data = flat.astype("<i4").view(np.uint8).reshape(-1, 4)[:, :3].tobytes()
    else:
        data = flat.astype(f"<i{width}").tobytes()
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(channels)
        wav.setsampwidth(width)
        wav.setframerate(rate)
        wav.writeframes(data)
    return path


def chime_error(spec: str, rate: int = 48000) -> str:
    with pytest.raises(ChimeError) as caught:
        load_chime(spec, rate)
    return str(caught.value)


# --- built-in chimes ---------------------------------------------------------------------------


def test_the_builtin_names_are_listed() -> None:
    assert BUILTIN_CHIMES == ("soft", "bell", "alert", "alarm")


@pytest.mark.parametrize("rate", RATES)
@pytest.mark.parametrize("name", BUILTIN_CHIMES)
def test_a_builtin_chime_has_its_length_and_level(name: str, rate: int) -> None:
    seconds, level, _, _ = SPEC[name]
    chime = load_chime(name, rate)
    assert chime.dtype == np.int16 and chime.ndim == 1
    assert 0.8 * seconds <= len(chime) / rate <= 1.2 * seconds
    assert abs(np.max(np.abs(chime.astype(np.int32))) / FULL - level) <= 0.02
    assert not chime.flags.writeable


@pytest.mark.parametrize("rate", RATES)
@pytest.mark.parametrize("name", BUILTIN_CHIMES)
def test_a_builtin_chime_does_not_click(name: str, rate: int) -> None:
    _, level, _, highest = SPEC[name]
    chime = load_chime(name, rate).astype(np.int32)
    assert abs(chime[0]) < 0.01 * FULL and abs(chime[-1]) < 0.01 * FULL
    # Bernstein: a signal of peak A and bandwidth f changes by at most 2*pi*f*A/rate per frame.
    bound = level * FULL * 2 * math.pi * highest / rate
    assert np.max(np.abs(np.diff(chime))) <= bound
    assert splatter_db(chime, rate, highest) < -70


@pytest.mark.parametrize("name", BUILTIN_CHIMES)
def test_the_click_check_notices_a_chime_cut_short(name: str) -> None:
    chime = load_chime(name, 48000).astype(np.int32)
    loudest = int(np.argmax(np.abs(chime)))
    cut = np.where(np.arange(len(chime)) < loudest, chime, 0)
    assert splatter_db(cut, 48000, SPEC[name][3]) > -50


@pytest.mark.parametrize("rate", RATES)
@pytest.mark.parametrize("name", BUILTIN_CHIMES)
def test_a_builtin_chime_plays_its_notes(name: str, rate: int) -> None:
    notes = SPEC[name][2]
    heard = strongest_frequencies(load_chime(name, rate), rate, len(notes))
    assert heard == pytest.approx(sorted(notes), abs=2.0)


@pytest.mark.parametrize("name", BUILTIN_CHIMES)
def test_a_builtin_chime_plays_its_notes_in_order(name: str) -> None:
    rate, notes = 48000, SPEC[name][2]
    chime = load_chime(name, rate)
    window = ms_to_frames(80, rate)
    first = strongest_frequencies(chime[:window], rate, 1)[0]
    last = strongest_frequencies(chime[-window:], rate, 1)[0]
    assert first == pytest.approx(notes[0], abs=15)  # 80 ms resolves notes ~12 Hz apart
    assert last == pytest.approx(notes[-1], abs=15)


def test_a_builtin_chime_is_synthesized_once_per_rate() -> None:
    first = load_chime("bell", 22050)
    started = time.perf_counter()
    again = load_chime("bell", 22050)
    assert time.perf_counter() - started < 0.005
    assert again is first
    assert load_chime("bell", 24000) is not first


# --- WAV files ---------------------------------------------------------------------------------


@pytest.mark.parametrize("file_rate", [22050, 44100])
@pytest.mark.parametrize("channels", [1, 2])
@pytest.mark.parametrize("width", [1, 2, 3, 4])
def test_a_wav_file_is_resampled_to_the_output_rate(
    tmp_path: Path, width: int, channels: int, file_rate: int
) -> None:
    mono = to_width(sine(0.5, file_rate), width)
    frames = mono if channels == 1 else np.stack([mono, mono], axis=1)
    path = write_wav(tmp_path / "tone.wav", frames, width, file_rate)

    chime = load_chime(str(path), 48000)

    assert chime.dtype == np.int16 and not chime.flags.writeable
    assert abs(len(chime) - 24000) <= 2
    assert strongest_frequencies(chime, 48000, 1)[0] == pytest.approx(1000, abs=2)
    middle = chime[2000:-2000].astype(np.float64)
    assert np.sqrt(np.mean(middle**2)) / FULL == pytest.approx(0.5 / math.sqrt(2), rel=0.02)


@pytest.mark.parametrize("width", [1, 2, 3, 4])
def test_a_wav_file_at_the_output_rate_keeps_its_samples(tmp_path: Path, width: int) -> None:
    signal = np.random.default_rng(width).integers(-32768, 32768, 1000).astype(np.int16)
    path = write_wav(tmp_path / "noise.wav", to_width(signal, width), width, 16000)
    expected = signal.astype(np.int32) >> 8 << 8 if width == 1 else signal
    assert np.array_equal(load_chime(str(path), 16000), expected)


@pytest.mark.parametrize("width", [2, 3])
def test_a_stereo_file_is_mixed_down_to_the_average(tmp_path: Path, width: int) -> None:
    rng = np.random.default_rng(7)
    left, right = rng.integers(-32768, 32768, (2, 4800))
    frames = np.stack([to_width(left, width), to_width(right, width)], axis=1)
    path = write_wav(tmp_path / "stereo.wav", frames, width, 48000)
    assert np.array_equal(load_chime(str(path), 48000), np.round((left + right) / 2))


def test_a_wav_file_is_read_again_only_when_it_changes(tmp_path: Path) -> None:
    path = write_wav(tmp_path / "chime.wav", sine(0.1, 8000), 2, 8000)
    first = load_chime(str(path), 48000)
    assert load_chime(str(path), 48000) is first

    write_wav(path, sine(0.2, 8000), 2, 8000)
    changed = load_chime(str(path), 48000)
    assert abs(len(changed) - 9600) <= 2


def test_a_ten_second_file_is_allowed(tmp_path: Path) -> None:
    path = write_wav(tmp_path / "ten.wav", np.zeros(80000, dtype=np.int64), 1, 8000)
    assert len(load_chime(str(path), 8000)) == 80000


def test_a_file_over_ten_seconds_is_refused(tmp_path: Path) -> None:
    path = write_wav(tmp_path / "long.wav", np.zeros(98400, dtype=np.int64), 1, 8000)
    assert (
        chime_error(str(path))
        == f"chime '{shown(str(path))}': 12.3 s long; chimes may be at most 10 s"
    )


@pytest.mark.parametrize("spec", ["x.wav", "sounds/x.wav", "~/x.wav", "DING.WAV"])
def test_a_relative_path_is_refused(spec: str) -> None:
    assert chime_error(spec) == f"chime '{spec}': give an absolute path"


@pytest.mark.parametrize("name", ["notes.wav", "notes.txt"])
def test_a_text_file_is_not_a_wav_file(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_text("ding dong\n")
    assert chime_error(str(path)) == (
        f"chime '{shown(str(path))}': not a PCM WAV file (file does not start with RIFF id)"
    )


def test_an_empty_file_is_not_a_wav_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.wav"
    path.write_bytes(b"")
    assert chime_error(str(path)) == (
        f"chime '{shown(str(path))}': not a PCM WAV file (the file ends inside its header)"
    )


def extensible(plain: Path, subformat: bytes) -> bytes:
    """The plain PCM file `plain` with a WAVE_FORMAT_EXTENSIBLE header, as editors write it."""
    data = plain.read_bytes()
    assert data[12:16] == b"fmt " and struct.unpack_from("<L", data, 16)[0] == 16
    tag, channels, rate, per_second, align, bits = struct.unpack_from("<HHLLHH", data, 20)
    assert tag == 1
    fmt = struct.pack("<HHLLHH", 0xFFFE, channels, rate, per_second, align, bits)
    fmt += struct.pack("<HHL", 22, bits, 0b11) + subformat  # cbSize, valid bits, channel mask
    body = b"WAVE" + b"fmt " + struct.pack("<L", len(fmt)) + fmt + data[36:]
    return b"RIFF" + struct.pack("<L", len(body)) + body


PCM_GUID = bytes.fromhex("0100000000001000800000aa00389b71")
FLOAT_GUID = bytes.fromhex("0300000000001000800000aa00389b71")


def test_an_extensible_header_over_pcm_reads_as_the_plain_file(tmp_path: Path) -> None:
    """What Audacity and others write for 24-bit or multichannel files: every Python reads
    it the same way (3.11's `wave` refuses the header, 3.12's reads it)."""
    stereo = np.stack([sine(0.1, 48000), sine(0.1, 48000, hz=660)], axis=1)
    plain = write_wav(tmp_path / "plain.wav", to_width(stereo, 3), 3, 48000)
    ext = tmp_path / "ext.wav"
    ext.write_bytes(extensible(plain, PCM_GUID))
    assert np.array_equal(load_chime(str(ext), 48000), load_chime(str(plain), 48000))


def test_an_extensible_header_over_floats_is_explained(tmp_path: Path) -> None:
    plain = write_wav(tmp_path / "plain.wav", sine(0.1, 48000), 2, 48000)
    path = tmp_path / "float.wav"
    path.write_bytes(extensible(plain, FLOAT_GUID))
    assert chime_error(str(path)) == (
        f"chime '{shown(str(path))}': not a PCM WAV file (WAVE_FORMAT_EXTENSIBLE over samples "
        "that are not integer PCM; save it as 16-bit PCM)"
    )


@pytest.mark.parametrize("spec", ["xyz", "", "Soft", "chime"])
def test_an_unknown_name_is_refused(spec: str) -> None:
    assert chime_error(spec) == f"chime '{spec}': {UNKNOWN}"


def test_a_missing_file_or_a_directory_is_refused(tmp_path: Path) -> None:
    missing = str(tmp_path / "missing.wav")
    assert chime_error(missing) == f"chime '{shown(missing)}': {UNKNOWN}"
    assert chime_error(str(tmp_path)) == f"chime '{shown(str(tmp_path))}': {UNKNOWN}"


# --- validate_chime_spec -----------------------------------------------------------------------


@pytest.mark.parametrize("spec", [*BUILTIN_CHIMES, "/usr/share/sounds/ding.wav", "/x/Y.WAV"])
def test_validation_accepts_builtins_and_absolute_wav_paths(spec: str) -> None:
    assert validate_chime_spec(spec) == spec


@pytest.mark.parametrize(
    ("spec", "reason"),
    [
        ("xyz", UNKNOWN),
        ("", UNKNOWN),
        ("/usr/share/sounds/ding.mp3", UNKNOWN),
        ("/usr/share/sounds", UNKNOWN),
        ("x.wav", "give an absolute path"),
        ("sounds/ding.wav", "give an absolute path"),
    ],
)
def test_validation_rejects_everything_else(spec: str, reason: str) -> None:
    with pytest.raises(ValueError, match=re.escape(f"chime '{spec}': {reason}")) as caught:
        validate_chime_spec(spec)
    assert str(caught.value) == f"chime '{spec}': {reason}"


def test_validation_does_not_open_the_file(tmp_path: Path) -> None:
    assert validate_chime_spec(str(tmp_path / "not-there-yet.wav")).endswith(".wav")


# --- what a payload may name ------------------------------------------------------------------

CHIMES_DIR = PurePath("/etc/herald/chimes")
IN_CHIMES_DIR = (
    "a payload may name only a WAV file in /etc/herald/chimes (by its file name or its "
    "absolute path)"
)
LIMIT = 16384


def chime_payload(chime: object) -> bytes:
    return json.dumps({"text": "Someone is at the door.", "chime": chime}).encode()


def rejection(chime: object, defaults: Defaults) -> str:
    with pytest.raises(PayloadRejected) as caught:
        parse_payload(chime_payload(chime), LIMIT, 0.0, defaults)
    return caught.value.reason


WITH_DIR = Defaults({"low": 60, "normal": 60, "high": 60, "critical": 60}, CHIMES_DIR)


@pytest.mark.parametrize(
    ("spec", "resolved"),
    [
        ("bell", "bell"),
        ("doorbell.wav", "/etc/herald/chimes/doorbell.wav"),
        ("Door Bell.WAV", "/etc/herald/chimes/Door Bell.WAV"),
        ("/etc/herald/chimes/doorbell.wav", "/etc/herald/chimes/doorbell.wav"),
        ("/etc/herald/chimes/./doorbell.wav", "/etc/herald/chimes/doorbell.wav"),
    ],
)
def test_a_payload_may_name_a_builtin_or_a_wav_file_in_the_chimes_directory(
    spec: str, resolved: str
) -> None:
    assert payload_chime(spec, CHIMES_DIR) == resolved
    assert parse_payload(chime_payload(spec), LIMIT, 0.0, WITH_DIR).chime == spec  # as given


@pytest.mark.parametrize(
    "spec",
    [
        "/etc/passwd.wav",
        "/usr/share/sounds/alsa/Front_Center.wav",
        "/etc/herald/chimes/../herald.wav",
        "/etc/herald/chimes/sub/doorbell.wav",
        "/etc/herald/chimes.wav",
        "/etc/herald/x.wav",
        "sub/doorbell.wav",
        "./doorbell.wav",
        "../doorbell.wav",
        "~/doorbell.wav",
    ],
)
def test_a_payload_naming_a_wav_file_elsewhere_is_rejected_naming_the_field(spec: str) -> None:
    assert rejection(spec, WITH_DIR) == f"chime: chime '{spec}': {IN_CHIMES_DIR}"


@pytest.mark.parametrize("spec", ["/etc/shadow", "/etc/herald/chimes/x.mp3", "gong", ""])
def test_a_payload_naming_no_wav_file_is_rejected(spec: str) -> None:
    assert rejection(spec, WITH_DIR) == f"chime: chime '{spec}': {UNKNOWN}"


def test_without_a_chimes_directory_a_payload_may_name_builtins_only() -> None:
    assert parse_payload(chime_payload("alert"), LIMIT).chime == "alert"
    assert rejection("doorbell.wav", Defaults(WITH_DIR.ttl_s)) == (
        "chime: chime 'doorbell.wav': not a built-in chime (soft, bell, alert, alarm), and no "
        "chimes directory is set for WAV files"
    )


def test_a_rejected_chime_is_shown_escaped_and_cut_short() -> None:
    reason = rejection("/srv/x\nWARNING forged line\x1b[31m.wav", WITH_DIR)
    assert reason == f"chime: chime '/srv/x\\nWARNING forged line\\x1b[31m.wav': {IN_CHIMES_DIR}"
    long = rejection("/srv/" + "x" * 5000 + ".wav", WITH_DIR)
    assert long == f"chime: chime '/srv/{'x' * 75}…': {IN_CHIMES_DIR}"


def test_the_daemon_tells_the_parser_its_chimes_directory(tmp_path: Path) -> None:
    config = Config(audio=AudioConfig(chimes_dir=tmp_path))
    assert announcement_defaults(config).chimes_dir == tmp_path
    assert Config().audio.chimes_dir == Path("/etc/herald/chimes")


# --- loading the chime an announcement asks for ------------------------------------------------

RATE = 16000


class SilentVoice(StubVoice):
    """A voice that says every text as 0.1 s of silence."""

    name = "silent"

    async def stream(self, text: str) -> AsyncGenerator[Samples, None]:
        yield np.zeros(RATE // 10, dtype=np.int16)


def daemon_config(
    chimes_dir: Path, normal_chime: str | bool = "soft", as_recorded: bool = False
) -> Config:
    """`as_recorded`: no loudness levelling and no tail, so the file's samples play unchanged."""
    normal = LevelConfig(ttl_s=900, chime=normal_chime)
    sound = {"loudness_lufs": 0.0, "tail_ms": 0} if as_recorded else {}
    return Config(
        audio=AudioConfig(sample_rate=RATE, chimes_dir=chimes_dir, **sound),
        priorities=PrioritiesConfig(normal=normal),
    )


def resolve(config: Config, announcement: Announcement) -> Samples | None:
    async def chime() -> Samples | None:
        return await chime_resolver(config)(announcement)

    return asyncio.run(chime())


def announced(config: Config, chime: object) -> Announcement:
    return parse_payload(chime_payload(chime), LIMIT, 0.0, announcement_defaults(config))


def played(config: Config, announcement: Announcement, out: Path) -> np.ndarray:
    """What the daemon's Speaker plays for the announcement, through a WAV file."""
    output = WavFileOutput(out, config.audio)

    async def run() -> None:
        speaker = Speaker([SilentVoice()], output, lambda _: None, build_delivery(config))
        assert await speaker.speak(announcement)
        await output.close()

    asyncio.run(run())
    with wave.open(str(out)) as wav:
        return np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2")


@pytest.fixture
def chimes_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "chimes"
    folder.mkdir()
    return folder


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


@pytest.mark.parametrize("by", ["file name", "absolute path"])
def test_a_wav_file_in_the_chimes_directory_plays_before_the_words(
    chimes_dir: Path, tmp_path: Path, by: str
) -> None:
    tone = sine(0.25, RATE, hz=880)
    path = write_wav(chimes_dir / "doorbell.wav", tone, 2, RATE)
    config = daemon_config(chimes_dir, as_recorded=True)
    announcement = announced(config, "doorbell.wav" if by == "file name" else str(path))

    heard = played(config, announcement, tmp_path / "out.wav")

    assert np.array_equal(heard[: len(tone)], tone)
    assert len(heard) == len(tone) + RATE // 10 and not heard[len(tone) :].any()


@pytest.mark.parametrize("level", [0.02, 0.9])
def test_a_wav_chime_is_heard_at_the_target_loudness_whatever_its_own(
    chimes_dir: Path, tmp_path: Path, level: float
) -> None:
    """A whisper of a file and a blaring one both play at `audio.loudness_lufs` (-18), measured
    over the chime's own samples, and a tail of silence follows the last sound."""
    tone = sine(1.0, RATE, hz=660, level=level)
    write_wav(chimes_dir / "doorbell.wav", tone, 2, RATE)
    config = daemon_config(chimes_dir)
    assert measure(tone, RATE).lufs != pytest.approx(-18.0, abs=3)  # far from it, to begin with

    heard = played(config, announced(config, "doorbell.wav"), tmp_path / "out.wav")

    chime = heard[: len(tone)]
    assert measure(chime, RATE).lufs == pytest.approx(-18.0, abs=0.5)
    assert (measure(chime, RATE).true_peak_dbtp or 0) <= -1.0
    tail = RATE * config.audio.tail_ms // 1000
    assert len(heard) == len(tone) + RATE // 10 + tail and not heard[len(tone) :].any()


def test_a_symbolic_link_out_of_the_chimes_directory_is_refused_when_loaded(
    chimes_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    outside = write_wav(tmp_path / "private.wav", sine(0.1, RATE), 2, RATE)
    (chimes_dir / "doorbell.wav").symlink_to(outside)
    config = daemon_config(chimes_dir)
    announcement = announced(config, "doorbell.wav")  # the name alone is fine

    with caplog.at_level(logging.WARNING):
        assert resolve(config, announcement) is None

    assert warnings_of(caplog) == [
        f"chime 'doorbell.wav': leads out of the chimes directory {shown(str(chimes_dir))} "
        "(a symbolic link or '..'); speaking without it"
    ]


def test_links_that_stay_in_the_chimes_directory_are_followed(tmp_path: Path) -> None:
    real_dir = tmp_path / "sounds"
    (real_dir / "v2").mkdir(parents=True)
    tone = sine(0.1, RATE, hz=660)
    write_wav(real_dir / "v2" / "ding.wav", tone, 2, RATE)
    (real_dir / "doorbell.wav").symlink_to(real_dir / "v2" / "ding.wav")
    (tmp_path / "chimes").symlink_to(real_dir)  # the directory itself may be a link
    config = daemon_config(tmp_path / "chimes")

    chime = resolve(config, announced(config, "doorbell.wav"))

    assert chime is not None and np.array_equal(chime, tone)


def test_dot_dot_out_of_the_chimes_directory_is_refused_by_the_loader_too(
    chimes_dir: Path, tmp_path: Path
) -> None:
    write_wav(tmp_path / "private.wav", sine(0.1, RATE), 2, RATE)
    spec = f"{chimes_dir}/../private.wav"
    with pytest.raises(ChimeError, match="a payload may name only a WAV file in"):
        load_chime(spec, RATE, within=chimes_dir)
    assert len(load_chime(spec, RATE)) == RATE // 10  # the config's chimes may be anywhere


def test_a_journaled_chime_outside_the_chimes_directory_is_refused(
    chimes_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An announcement from the journal was parsed under an older configuration."""
    outside = write_wav(tmp_path / "private.wav", sine(0.1, RATE), 2, RATE)
    config = daemon_config(chimes_dir)
    with caplog.at_level(logging.WARNING):
        assert resolve(config, Announcement("j1", "From the journal.", chime=str(outside))) is None
    assert warnings_of(caplog) == [
        f"chime '{shown(str(outside))}': a payload may name only a WAV file in "
        f"{shown(str(chimes_dir))} (by its file name or its absolute path); speaking without it"
    ]


def test_a_priority_chime_may_be_any_wav_file(chimes_dir: Path, tmp_path: Path) -> None:
    tone = sine(0.1, RATE, hz=550)
    outside = write_wav(tmp_path / "elsewhere.wav", tone, 2, RATE)
    config = daemon_config(chimes_dir, normal_chime=str(outside))
    chime = resolve(config, Announcement("a", "Hello."))  # chime True: the priority's
    assert chime is not None and np.array_equal(chime, tone)
    assert resolve(config, Announcement("b", "Hello.", chime=False)) is None
    assert resolve(daemon_config(chimes_dir, False), Announcement("c", "Hello.")) is None


@pytest.mark.parametrize("source", ["payload", "config"])
def test_a_chime_with_a_newline_is_logged_escaped(
    chimes_dir: Path, source: str, caplog: pytest.LogCaptureFixture
) -> None:
    name = "x\nERROR herald: forged line.wav"
    if source == "payload":
        config = daemon_config(chimes_dir)
        spec, announcement = name, announced(config, name)
    else:
        spec = f"/nonexistent/{name}"  # the config is trusted, and still escaped
        config = daemon_config(chimes_dir, normal_chime=spec)
        announcement = Announcement("a", "Hello.")

    with caplog.at_level(logging.WARNING):
        assert resolve(config, announcement) is None

    (message,) = warnings_of(caplog)
    assert "\n" not in message
    assert message == f"chime '{shown(spec)}': {UNKNOWN}; speaking without it"
    assert "x\\nERROR herald: forged line.wav'" in message


def test_an_oversize_file_is_refused_by_its_size_without_being_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "huge.wav"
    with path.open("wb") as file:
        file.truncate(300 * 2**20)  # sparse: 300 MB that take no room
    opened: list[str] = []
    monkeypatch.setattr(chimes, "_read_bytes", opened.append)

    started = time.perf_counter()
    message = chime_error(str(path))

    assert time.perf_counter() - started < 0.5
    assert message == f"chime '{shown(str(path))}': larger than 4 MiB; chimes are short sounds"
    assert opened == []
    assert MAX_FILE_BYTES == 4 * 2**20


class CountingFile:
    """A file opened for reading that counts the bytes read from it."""

    counts: ClassVar[list[int]] = []

    def __init__(self, path: str, mode: str) -> None:
        assert mode == "rb"
        self._file = open(path, "rb")  # noqa: SIM115 (closed by __exit__)

    def __enter__(self) -> CountingFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self._file.close()

    def read(self, size: int = -1) -> bytes:
        data = self._file.read(size)
        CountingFile.counts.append(len(data))
        return data


def test_a_file_that_grew_after_its_stat_is_read_only_up_to_the_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    small = write_wav(tmp_path / "small.wav", sine(0.1, RATE), 2, RATE)
    path = tmp_path / "grown.wav"
    with path.open("wb") as file:
        file.truncate(300 * 2**20)
    counted: list[int] = []
    monkeypatch.setattr(CountingFile, "counts", counted)
    monkeypatch.setattr(chimes, "_stat_wav", lambda real, spec: small.stat())  # the old size
    monkeypatch.setattr(chimes, "open", CountingFile, raising=False)

    message = chime_error(str(path))

    assert message == f"chime '{shown(str(path))}': larger than 4 MiB; chimes are short sounds"
    assert sum(counted) == MAX_FILE_BYTES + 1


def test_a_wav_chime_is_read_in_a_worker_thread_while_the_loop_goes_on(
    chimes_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_wav(chimes_dir / "slow.wav", sine(0.1, RATE), 2, RATE)
    config = daemon_config(chimes_dir)
    readers: list[threading.Thread] = []
    read_wav = chimes._read_wav

    def slow_read(path: str) -> Any:
        readers.append(threading.current_thread())
        time.sleep(0.3)  # a slow SD card
        return read_wav(path)

    monkeypatch.setattr(chimes, "_read_wav", slow_read)

    async def main() -> tuple[Samples | None, int]:
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        ticker = asyncio.create_task(tick())
        chime = await chime_resolver(config)(announced(config, "slow.wav"))
        ticker.cancel()
        return chime, ticks

    chime, ticks = asyncio.run(main())

    assert chime is not None and len(chime) == RATE // 10
    assert len(readers) == 1 and readers[0] is not threading.main_thread()
    assert ticks >= 10  # the loop turned all the while the file was being read


# --- dsp helpers -------------------------------------------------------------------------------


@given(
    arrays(np.int16, st.integers(0, 300)),
    st.floats(0.0, 4.0, allow_nan=False, allow_infinity=False),
)
def test_apply_gain_rounds_and_clips(samples: Samples, gain: float) -> None:
    expected = np.clip(np.round(samples.astype(np.float64) * gain), -32768, 32767)
    result = apply_gain(samples, gain)
    assert result.dtype == np.int16
    assert np.array_equal(result, expected)


def test_apply_gain_of_one_returns_the_samples_and_zero_silences() -> None:
    samples = np.array([-32768, -3, 0, 5, 32767], dtype=np.int16)
    assert apply_gain(samples, 1.0) is samples
    assert np.array_equal(apply_gain(samples, 0.0), np.zeros(5))
    assert apply_gain(samples, 2.0).tolist() == [-32768, -6, 0, 10, 32767]
    assert apply_gain(samples, 0.5).tolist() == [-16384, -2, 0, 2, 16384]  # half to even


@pytest.mark.parametrize("gain", [-0.5, math.nan, math.inf])
def test_apply_gain_refuses_a_gain_that_is_not_a_volume(gain: float) -> None:
    with pytest.raises(ValueError, match="gain must be a finite number >= 0"):
        apply_gain(np.zeros(3, dtype=np.int16), gain)


def test_fade_out_is_a_falling_raised_cosine() -> None:
    envelope = fade_out(np.full(480, 30000, dtype=np.int16)).astype(np.int32)
    assert envelope[0] == 30000 and envelope[-1] == 0
    assert np.all(np.diff(envelope) <= 0)
    assert envelope[240] == pytest.approx(15000, abs=100)  # halfway down at half time


def test_fade_out_keeps_the_first_sample_and_silences_the_last() -> None:
    signal = sine(0.01, 48000, hz=440, level=0.9)[7:]
    faded = fade_out(signal)
    assert faded.dtype == np.int16 and len(faded) == len(signal)
    assert faded[0] == signal[0] and faded[-1] == 0
    assert np.all(np.abs(faded.astype(np.int32)) <= np.abs(signal.astype(np.int32)))
    assert len(fade_out(signal[:0])) == 0 and fade_out(signal[:1]).tolist() == [0]


def test_ms_to_frames() -> None:
    assert ms_to_frames(10, 48000) == 480
    assert ms_to_frames(10, 44100) == 441
    assert ms_to_frames(2.5, 16000) == 40
    assert ms_to_frames(0, 48000) == 0
