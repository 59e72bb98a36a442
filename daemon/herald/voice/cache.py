"""The phrase cache: a cloud voice's audio of a phrase, kept on disk and played with no network.

Each entry is two files in `<state_dir>/cache/`, named by a SHA-256 of its key (the engine that
spoke, that engine's voice, the sample rate and the exact text): `<hash>.pcm`, the samples as raw
16-bit little-endian mono PCM at the output rate, and `<hash>.json`, the key and its size for
`herald cache list`. Because the engine that actually spoke is part of the key, a lookup for one
engine never finds another's audio: a fallback voice's words are never heard as the primary's.
Only engines named in `voices` are kept; espeak-ng is not (it is local and starts at once). This
is the store; what a voice keeps, and when, is herald.voice.cached's (CachedVoice).

Each file is written to a temporary name and renamed, the `.json` before the `.pcm`, so a `.pcm`
always belongs to a complete entry, even after a crash. The cache is bounded by the total size of
its files: a hit touches its `.pcm` (its modification time is its last use), and a store evicts
the least recently used entries until the total fits. Everything is read from the directory
itself, so a restart, or `herald cache clear` run beside the daemon, needs no index to agree.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from herald.audio.dsp import Samples, pcm16

log = logging.getLogger(__name__)

MB = 1_000_000
ENTRY_SHARE = 4  # one entry may fill at most a quarter of the cache


@dataclass(frozen=True)
class CacheKey:
    """What makes two announcements sound the same."""

    engine: str  # the engine that spoke: "deepgram", "slng", "gateway"
    voice: str  # that engine's voice and settings, e.g. "aura-2-thalia-en"
    sample_rate: int  # of the stored samples (the output rate)
    text: str

    @property
    def digest(self) -> str:
        fields = [self.engine, self.voice, self.sample_rate, self.text]
        return hashlib.sha256(json.dumps(fields, ensure_ascii=False).encode()).hexdigest()


@dataclass(frozen=True)
class CacheEntry:
    key: CacheKey
    size: int  # bytes on disk, both files
    last_used: float  # Unix time

    @property
    def seconds(self) -> float:
        return (self.size // 2) / self.key.sample_rate


class PhraseCache:
    """Samples per key on disk, least recently used out first. Blocking file I/O: run it in a
    thread (`asyncio.to_thread`) from the event loop."""

    def __init__(
        self, directory: Path, max_bytes: int, sample_rate: int, voices: Mapping[str, str]
    ) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.sample_rate = sample_rate
        self._voices = dict(voices)  # engine -> its voice identity, for the engines kept
        self._last_use_ns = 0

    def key(self, engine: str, text: str) -> CacheKey | None:
        """The key for `engine` speaking `text`; None when that engine's audio is not kept."""
        voice = self._voices.get(engine)
        return None if voice is None else CacheKey(engine, voice, self.sample_rate, text)

    @property
    def max_entry_bytes(self) -> int:
        return self.max_bytes // ENTRY_SHARE

    def lookup(self, key: CacheKey) -> Samples | None:
        """The samples stored for exactly this key, or None; a hit counts as a use."""
        path = self._path(key, ".pcm")
        try:
            data = path.read_bytes()
            self._touch(path)
        except OSError:
            return None
        return pcm16(data)

    def store(self, key: CacheKey, samples: Samples) -> bool:
        """Keep the samples under the key, then evict down to the bound. False: too large."""
        data = samples.astype("<i2", copy=False).tobytes()
        if not data or len(data) > self.max_entry_bytes:
            return False
        self.directory.mkdir(parents=True, exist_ok=True)
        meta = {
            "engine": key.engine,
            "voice": key.voice,
            "sample_rate": key.sample_rate,
            "text": key.text,
            "bytes": len(data),
            "created": time.time(),
        }
        _write_atomically(self._path(key, ".json"), json.dumps(meta, ensure_ascii=False).encode())
        _write_atomically(self._path(key, ".pcm"), data)
        self._touch(self._path(key, ".pcm"))
        self._evict()
        return True

    def entries(self) -> list[CacheEntry]:
        """Every complete entry, the most recently used first."""
        found = []
        for meta_path in self._files(".json"):
            entry = self._entry(meta_path)
            if entry is not None:
                found.append(entry)
        return sorted(found, key=lambda entry: entry.last_used, reverse=True)

    def total_bytes(self) -> int:
        return sum(_size(path) for path in self._files(".json", ".pcm"))

    def clear(self) -> tuple[int, int]:
        """Delete every cache file; return how many files and bytes went."""
        files = freed = 0
        for path in self._files(".json", ".pcm", ".tmp"):
            size = _size(path)
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                files, freed = files + 1, freed + size
        return files, freed

    # --- inside -----------------------------------------------------------------------------

    def _touch(self, pcm: Path) -> None:
        """Mark a use. The kernel's own clock for file times ticks only every few milliseconds:
        set a finer one, strictly increasing, so uses in quick succession keep their order."""
        self._last_use_ns = max(time.time_ns(), self._last_use_ns + 1000)
        os.utime(pcm, ns=(self._last_use_ns, self._last_use_ns))

    def _path(self, key: CacheKey, suffix: str) -> Path:
        return self.directory / f"{key.digest}{suffix}"

    def _files(self, *suffixes: str) -> list[Path]:
        try:
            return [path for path in self.directory.iterdir() if path.suffix in suffixes]
        except FileNotFoundError:
            return []

    def _entry(self, meta_path: Path) -> CacheEntry | None:
        pcm = meta_path.with_suffix(".pcm")
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            key = CacheKey(
                str(meta["engine"]), str(meta["voice"]), int(meta["sample_rate"]), str(meta["text"])
            )
            stat = pcm.stat()
        except (OSError, ValueError, KeyError, TypeError):
            return None  # not complete, or not ours
        return CacheEntry(key, stat.st_size + _size(meta_path), stat.st_mtime_ns / 1e9)

    def _evict(self) -> None:
        """Remove orphans, then the least recently used entries until the total fits."""
        pcms = {path.stem: path for path in self._files(".pcm")}
        metas = {path.stem: path for path in self._files(".json")}
        for stem in metas.keys() - pcms.keys():
            metas.pop(stem).unlink(missing_ok=True)  # a crash between the two writes
        sizes = {stem: _size(path) + _size(metas.get(stem)) for stem, path in pcms.items()}
        total = sum(sizes.values())
        for stem in sorted(pcms, key=lambda stem: _mtime(pcms[stem])):
            if total <= self.max_bytes:
                break
            pcms[stem].unlink(missing_ok=True)
            if stem in metas:
                metas[stem].unlink(missing_ok=True)
            total -= sizes[stem]
            log.debug("cache: evicted %s", stem)


def _write_atomically(path: Path, data: bytes) -> None:
    temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    temporary.write_bytes(data)
    temporary.replace(path)


def _size(path: Path | None) -> int:
    if path is None:
        return 0
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _mtime(path: Path) -> int:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return 0


def concatenate(chunks: list[Samples]) -> Samples:
    return np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int16)
