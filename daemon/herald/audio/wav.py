"""A WAV file as the output, for `herald say --output` on machines without a sound card."""

from __future__ import annotations

import wave
from pathlib import Path

from herald.audio import AudioError
from herald.audio.dsp import Samples, upmix
from herald.config import AudioConfig


class WavFileOutput:
    """An AudioSink that writes S16_LE frames at the configured rate and channels to a file."""

    def __init__(self, path: Path, cfg: AudioConfig) -> None:
        self._path = path
        self._cfg = cfg
        self._file: wave.Wave_write | None = None
        self.frames_written = 0

    async def open(self) -> None:
        if self._file is not None:
            return
        try:
            self._file = wave.open(str(self._path), "wb")  # noqa: SIM115 (closed in close())
        except OSError as exc:
            raise AudioError(f"cannot write {self._path}: {exc.strerror}") from None
        self._file.setnchannels(self._cfg.channels)
        self._file.setsampwidth(2)
        self._file.setframerate(self._cfg.sample_rate)

    async def play(self, samples: Samples) -> None:
        if self._file is None:
            raise AudioError(f"{self._path} is not open")
        self._file.writeframes(upmix(samples, self._cfg.channels).astype("<i2").tobytes())
        self.frames_written += len(samples)

    def place(self, at: float) -> None:
        """A file has no clock: what is played is kept as it comes."""

    async def finish(self) -> None:
        """Nothing waits in a file."""

    def drop(self) -> None:
        """A file keeps what was written."""

    async def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
