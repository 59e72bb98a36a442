"""Voices: each turns text into audio; `build_voices` makes the configured fallback chain."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence

from herald.config import Config, read_secret
from herald.voice.base import Voice, VoiceError
from herald.voice.deepgram import DeepgramVoice
from herald.voice.espeak import EspeakVoice

__all__ = ["Voice", "VoiceError", "build_voices", "voices_running"]


def build_voices(config: Config) -> list[Voice]:
    """The voices named in `voice.engines`, in order: the first that works speaks."""
    rate = config.audio.sample_rate
    voices: list[Voice] = []
    for name in config.voice.engines:
        if name == "espeak":
            voices.append(EspeakVoice(config.voice.espeak, rate))
        elif name == "deepgram":
            deepgram = config.voice.deepgram
            key = read_secret(deepgram.api_key_file, "DEEPGRAM_API_KEY", "deepgram_api_key")
            voices.append(DeepgramVoice(deepgram, key, rate))
    return voices


@contextlib.asynccontextmanager
async def voices_running(voices: Sequence[Voice]) -> AsyncIterator[None]:
    """Run each voice's upkeep (its warm socket) for the duration of the block."""
    tasks = [asyncio.create_task(voice.run(), name=f"voice-{voice.name}") for voice in voices]
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for voice in voices:
            await voice.aclose()
