"""Voices: each turns text into audio; `build_voices` makes the configured fallback chain, for the
daemon with its cloud voices keeping their phrases in the phrase cache (`build_cache`)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

from herald.config import Config, read_secret
from herald.voice.base import Voice, VoiceError
from herald.voice.cache import MB, PhraseCache
from herald.voice.cached import CachedVoice, with_phrase_cache
from herald.voice.deepgram import DeepgramVoice
from herald.voice.espeak import EspeakVoice
from herald.voice.gateway import GatewayVoice
from herald.voice.slng import SlngVoice

__all__ = [
    "CachedVoice",
    "PhraseCache",
    "Voice",
    "VoiceError",
    "build_cache",
    "build_voices",
    "cache_directory",
    "voice_identities",
    "voices_running",
]


def build_voices(config: Config, *, phrase_cache: bool = False) -> list[Voice]:
    """The voices named in `voice.engines`, in order: the first that works speaks.

    With `phrase_cache` (the daemon's) and `voice.cache.enabled`, each cloud voice is a
    CachedVoice, all sharing one PhraseCache; without (`herald say --local`, `herald check`),
    nothing is recalled or kept.
    """
    voices = [_build_voice(config, name) for name in config.voice.engines]
    cache = build_cache(config) if phrase_cache else None
    return voices if cache is None else with_phrase_cache(voices, cache)


def _build_voice(config: Config, name: str) -> Voice:
    rate, voice = config.audio.sample_rate, config.voice
    if name == "deepgram":
        key = read_secret(voice.deepgram.api_key_file, "DEEPGRAM_API_KEY", "deepgram_api_key")
        return DeepgramVoice(voice.deepgram, key, rate)
    if name == "slng":
        key = read_secret(voice.slng.api_key_file, "SLNG_API_KEY", "slng_api_key")
        return SlngVoice(voice.slng, key, rate)
    if name == "gateway":
        return GatewayVoice(voice.gateway, rate)
    return EspeakVoice(voice.espeak, rate)


def cache_directory(config: Config) -> Path:
    return config.state_dir / "cache"


def cached_voices(config: Config) -> dict[str, str]:
    """Each cloud engine's voice as the cache names it: a change of voice is a change of key.

    espeak-ng is not here: it is local and starts at once, so its audio is never kept.
    """
    slng, gateway = config.voice.slng, config.voice.gateway
    return {
        "deepgram": config.voice.deepgram.model,
        "slng": f"{slng.provider}/{slng.model_id} {slng.voice} "
        f"language={slng.language or ''} speed={slng.speed or ''}",
        "gateway": f"{gateway.url} {gateway.sample_rate}",
    }


def voice_identities(config: Config) -> dict[str, str]:
    """Each engine's voice, as the loudness learned of it is kept: a change of voice (model,
    speaker, speed) is learned afresh."""
    espeak = config.voice.espeak
    return {
        **cached_voices(config),
        "espeak": f"{espeak.voice} {espeak.speed_wpm} wpm pitch {espeak.pitch}",
    }


def open_cache(config: Config) -> PhraseCache:
    """The phrase cache in the state directory, whether or not it is enabled (for the CLI)."""
    return PhraseCache(
        cache_directory(config),
        int(config.voice.cache.max_mb * MB),
        config.audio.sample_rate,
        cached_voices(config),
    )


def build_cache(config: Config) -> PhraseCache | None:
    """The phrase cache the daemon's voices keep their phrases in, or None when
    `voice.cache.enabled` is false."""
    return open_cache(config) if config.voice.cache.enabled else None


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
