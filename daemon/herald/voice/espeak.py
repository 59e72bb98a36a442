"""The local voice: espeak-ng in a subprocess, streamed and resampled to the output rate.

espeak-ng writes a WAV stream to stdout as it synthesizes, so the first samples are ready long
before the whole text is spoken. The text goes in on stdin: it never shows in a process list and
a text starting with '-' is never taken for an option.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import struct
from collections.abc import AsyncGenerator

from herald.audio.dsp import Samples, StreamResampler, pcm16
from herald.config import EspeakConfig
from herald.voice.base import VoiceError

log = logging.getLogger(__name__)

READ_SIZE = 4096


class EspeakVoice:
    name = "espeak"

    def __init__(self, cfg: EspeakConfig, output_rate: int, binary: str = "espeak-ng") -> None:
        self._cfg = cfg
        self._output_rate = output_rate
        self._binary = binary

    def _argv(self) -> list[str]:
        executable = shutil.which(self._binary)
        if executable is None:
            raise VoiceError(f"{self._binary} is not installed (apt install espeak-ng)")
        cfg = self._cfg
        return [
            executable,
            "--stdout",
            "-v",
            cfg.voice,
            "-s",
            str(cfg.speed_wpm),
            "-p",
            str(cfg.pitch),
        ]

    async def stream(self, text: str) -> AsyncGenerator[Samples, None]:
        process = await asyncio.create_subprocess_exec(
            *self._argv(),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        assert process.stdin is not None
        assert process.stdout is not None
        try:
            process.stdin.write(text.encode("utf-8"))
            process.stdin.close()
            source_rate = await _read_wav_header(process.stdout)
            if source_rate is None:  # espeak-ng wrote nothing: its exit status says why
                await self._check_exit(process)
                raise VoiceError("espeak-ng ended before writing any audio")
            resampler = StreamResampler(source_rate, self._output_rate)
            carry = b""
            while chunk := await process.stdout.read(READ_SIZE):
                data = carry + chunk
                usable = len(data) - len(data) % 2
                samples, carry = pcm16(data[:usable]), data[usable:]
                if len(out := resampler.push(samples)):
                    yield out
            if len(tail := resampler.flush()):
                yield tail
            await self._check_exit(process)
        finally:
            await _stop(process)

    async def _check_exit(self, process: asyncio.subprocess.Process) -> None:
        assert process.stderr
        code = await process.wait()
        if code != 0:
            message = (await process.stderr.read()).decode("utf-8", "replace").strip()
            reason = message.splitlines()[-1] if message else f"exit status {code}"
            raise VoiceError(f"espeak-ng (voice '{self._cfg.voice}') failed: {reason}")

    def describe(self) -> str:
        return "espeak ready"

    async def run(self) -> None:
        """espeak-ng starts per announcement: nothing to keep warm."""

    async def check(self) -> str:
        frames = 0
        async for chunk in self.stream("Herald check."):
            frames += len(chunk)
        if frames == 0:
            raise VoiceError("espeak-ng produced no audio")
        return f"voice '{self._cfg.voice}', {frames / self._output_rate:.1f} s of test speech"

    async def aclose(self) -> None:
        """espeak-ng runs per announcement: nothing stays open."""


async def _read_wav_header(stdout: asyncio.StreamReader) -> int | None:
    """Consume the RIFF/WAVE header up to the start of the samples; return the sample rate.

    None when the stream ends before the header does.
    """
    try:
        riff = await stdout.readexactly(12)
        if riff[:4] != b"RIFF" or riff[8:12] != b"WAVE":
            raise VoiceError("espeak-ng did not write WAV audio")
        rate = 0
        while True:
            chunk_id, size = struct.unpack("<4sI", await stdout.readexactly(8))
            if chunk_id == b"data":
                break
            body = await stdout.readexactly(size + size % 2)
            if chunk_id == b"fmt ":
                _, channels, rate, _, _, bits = struct.unpack("<HHIIHH", body[:16])
                if channels != 1 or bits != 16:
                    raise VoiceError(f"espeak-ng wrote {channels} ch / {bits} bit audio")
    except asyncio.IncompleteReadError:
        return None
    if rate <= 0:
        raise VoiceError("espeak-ng wrote WAV audio without a format chunk")
    return rate


async def _stop(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
    # communicate(), not wait(): wait() also waits for the pipes to close, and a stdout pipe whose
    # reading was paused (its buffer full) never closes unless it is read to the end.
    # Shielded, so a second cancellation leaves no zombie behind.
    await asyncio.shield(process.communicate())
