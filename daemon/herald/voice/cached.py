"""A voice that keeps its phrases: a cloud voice wrapped around the phrase cache (PhraseCache).

A CachedVoice is still a Voice (its name, upkeep, description, check and close are the wrapped
voice's), and offers the Speaker two ways to speak a text: `recall` the whole audio kept for it
(said earlier in this announcement, from an announcement still being written, or from the disk;
no network, first samples within milliseconds), or `stream_keeping` it live while collecting what
it says. What it said is kept only when it spoke to the end, and written to the disk only when the
whole announcement finished (`keep`), never a cut-off or failed one's (`forget`). Its key is the
name of the voice that actually spoke, so a fallback voice's words are never recalled as another's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass

from herald.audio.dsp import Samples
from herald.voice.base import Voice
from herald.voice.cache import CacheKey, PhraseCache, concatenate

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Recalled:
    """The whole audio of a text, as recalled."""

    samples: Samples
    # From the cache (reported as `cached`); False: this announcement's own audio, said live in
    # an earlier round and heard again in a repeat.
    from_cache: bool


class CachedVoice:
    """One voice and the shared phrase cache: what the voice said to the end of an announcement
    that finished is kept, and recalled instead of asking the voice again."""

    def __init__(self, voice: Voice, cache: PhraseCache) -> None:
        if cache.key(voice.name, "") is None:
            raise ValueError(f"the phrase cache does not keep the audio of {voice.name}")
        self.name = voice.name
        self._voice = voice
        self._cache = cache
        self._said: dict[str, Samples] = {}  # text -> what it said to the end, this announcement
        self._unwritten: dict[CacheKey, Samples] = {}  # finished, on its way to the disk
        self._writing: set[asyncio.Task[None]] = set()

    async def recall(self, text: str) -> Recalled | None:
        """The whole audio kept for `text`: from this announcement's earlier round, from one
        whose audio is still being written, or from the disk (read in a thread); None: none."""
        if (said := self._said.get(text)) is not None:
            return Recalled(said, from_cache=False)
        key = self._key(text)
        if (unwritten := self._unwritten.get(key)) is not None:
            return Recalled(unwritten, from_cache=True)
        stored = await asyncio.to_thread(self._cache.lookup, key)
        return None if stored is None else Recalled(stored, from_cache=True)

    async def stream_keeping(self, text: str) -> AsyncGenerator[Samples, None]:
        """The voice's live audio of `text`, collected on the way: once the voice has spoken it
        to the end (no VoiceError, not closed early), it is recalled for the rest of this
        announcement and written by `keep`. Audio beyond the cache's entry size is not kept."""
        collected = _Collected(self._cache.max_entry_bytes)
        async with contextlib.aclosing(self._voice.stream(text)) as chunks:
            async for chunk in chunks:
                collected.add(chunk)
                yield chunk
        if (audio := collected.samples()) is not None:
            self._said[text] = audio

    def keep(self) -> None:
        """The announcement finished: write what the voice said in it to the cache, in a thread
        (a task of its own: the announcement has finished and nothing may cancel it now)."""
        said, self._said = self._said, {}
        if not said:
            return
        audio = {self._key(text): samples for text, samples in said.items()}
        self._unwritten.update(audio)
        task = asyncio.create_task(self._write(audio), name=f"phrase-cache-write-{self.name}")
        self._writing.add(task)
        task.add_done_callback(self._writing.discard)

    def forget(self) -> None:
        """The announcement did not finish (or starts again): what the voice said is not kept."""
        self._said = {}

    async def written(self) -> None:
        """Wait until the audio of the announcements kept so far is in the cache."""
        if self._writing:
            await asyncio.wait(self._writing)

    # --- the Voice, delegated -----------------------------------------------------------------

    def stream(self, text: str) -> AsyncGenerator[Samples, None]:
        """The voice alone, nothing recalled or kept (an announcement with `cache: false`)."""
        return self._voice.stream(text)

    async def run(self) -> None:
        await self._voice.run()

    def describe(self) -> str:
        return self._voice.describe()

    async def check(self) -> str:
        return await self._voice.check()

    async def aclose(self) -> None:
        await self._voice.aclose()

    # --- inside -------------------------------------------------------------------------------

    def _key(self, text: str) -> CacheKey:
        key = self._cache.key(self.name, text)
        assert key is not None  # (checked when wrapped)
        return key

    async def _write(self, audio: dict[CacheKey, Samples]) -> None:
        try:
            for key, samples in audio.items():
                await asyncio.to_thread(self._cache.store, key, samples)
        except OSError as exc:
            log.warning("cache: cannot write to %s: %s", self._cache.directory, exc)
        finally:
            for key, samples in audio.items():
                if self._unwritten.get(key) is samples:
                    del self._unwritten[key]


def with_phrase_cache(voices: Sequence[Voice], cache: PhraseCache) -> list[Voice]:
    """The voices in their order, each whose audio the cache keeps (the cloud ones) wrapped in a
    CachedVoice; the others (espeak-ng: local, it starts at once) as they are."""
    return [
        CachedVoice(voice, cache) if cache.key(voice.name, "") is not None else voice
        for voice in voices
    ]


class _Collected:
    """A voice's audio, collected for the cache; given up once it is too large to keep."""

    def __init__(self, limit_bytes: int) -> None:
        self._chunks: list[Samples] | None = []
        self._bytes = 0
        self._limit = limit_bytes

    def add(self, chunk: Samples) -> None:
        if self._chunks is None:
            return
        self._bytes += 2 * len(chunk)
        if self._bytes > self._limit:
            self._chunks = None
        else:
            self._chunks.append(chunk)

    def samples(self) -> Samples | None:
        return concatenate(self._chunks) if self._chunks else None
