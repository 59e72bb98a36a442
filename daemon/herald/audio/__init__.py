"""Audio out: where announcements are heard (an ALSA device), or kept (a WAV file)."""

from __future__ import annotations

from typing import Protocol

from herald.audio.dsp import Samples


class AudioError(Exception):
    """The output cannot play: the message names the device and says why."""


class AudioSink(Protocol):
    """Takes mono int16 samples at the configured rate and makes them heard (or stored)."""

    async def open(self) -> None:
        """Make the output ready; idempotent. Raises AudioError."""

    async def play(self, samples: Samples) -> None:
        """Queue samples; returns once they are accepted (back-pressure, never unbounded)."""

    def place(self, at: float) -> None:
        """The next sample played is heard at `at` (time.monotonic()): silence before it, or,
        if that is past, as much of the sound skipped as was due; and the rest of the sound
        kept in step with the clock until finish() or drop(). An output with no clock (a file)
        ignores it."""

    async def finish(self) -> None:
        """Wait until everything queued has been played. Raises AudioError."""

    def drop(self) -> None:
        """Discard everything queued and silence the output now."""

    async def close(self) -> None:
        """Release the output."""
