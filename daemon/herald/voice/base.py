"""The small contract every voice keeps: text in, mono int16 samples at the output rate out."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Protocol

from herald.audio.dsp import Samples


class VoiceError(Exception):
    """The voice cannot speak this text now; the message says why in one line."""


class Voice(Protocol):
    name: str

    def stream(self, text: str) -> AsyncGenerator[Samples, None]:
        """Yield the spoken text as mono int16 chunks at the output sample rate.

        Raises VoiceError. Cancelling the consumer stops synthesis and frees its resources.
        """
        ...

    async def run(self) -> None:
        """Background upkeep (a warm socket) until cancelled; returns at once if none is needed."""
        ...

    def describe(self) -> str:
        """A few words for a person: e.g. "deepgram warm (age 12 min)", "espeak ready"."""
        ...

    async def check(self) -> str:
        """Prove the voice works; return a short description. Raises VoiceError."""
        ...

    async def aclose(self) -> None:
        """Release connections or processes the voice keeps between announcements."""
        ...
