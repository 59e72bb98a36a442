"""Voices: each turns text into audio; `build_voices` makes the configured fallback chain."""

from __future__ import annotations

from herald.config import Config
from herald.voice.base import Voice, VoiceError
from herald.voice.espeak import EspeakVoice

__all__ = ["Voice", "VoiceError", "build_voices"]


def build_voices(config: Config) -> list[Voice]:
    """The voices named in `voice.engines`, in order: the first that works speaks."""
    voices: list[Voice] = []
    for name in config.voice.engines:
        if name == "espeak":
            voices.append(EspeakVoice(config.voice.espeak, config.audio.sample_rate))
    return voices
