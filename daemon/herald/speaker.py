"""Speaking one announcement: voice stream → audio out, with started/finished/failed events.

The Speaker is the one place that sequences the I/O of an announcement. It tries the voices in
order; a voice that fails hands the text over to the next one, so a broken cloud voice never
silences the speaker while the local one works. Events say which voice spoke, and `degraded`
when it was not the first.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence

from herald.announcement import Announcement
from herald.audio import AudioError, AudioSink
from herald.events import Event, EventKind, EventSink
from herald.voice.base import Voice, VoiceError

log = logging.getLogger(__name__)


class Speaker:
    def __init__(
        self, voices: Sequence[Voice], output: AudioSink, emit: EventSink, sample_rate: int
    ) -> None:
        if not voices:
            raise ValueError("a Speaker needs at least one voice")
        self._voices = voices
        self._output = output
        self._emit = emit
        self._sample_rate = sample_rate

    async def speak(self, announcement: Announcement) -> bool:
        """Speak it to the end; True when it was heard, False when it failed (with an event)."""
        try:
            await self._output.open()
            voice, frames = await self._stream_first_working_voice(announcement)
            await self._output.finish()
        except (AudioError, VoiceError) as exc:
            self._output.drop()
            log.error("announcement %s failed: %s", announcement.id, exc)
            self._event("failed", announcement, reason=str(exc))
            return False
        except asyncio.CancelledError:
            self._output.drop()
            self._event("failed", announcement, reason="stopped: herald shut down while speaking")
            raise
        duration_s = round(frames / self._sample_rate, 3)
        degraded = voice != self._voices[0].name
        self._event("finished", announcement, voice=voice, degraded=degraded, duration_s=duration_s)
        return True

    async def _stream_first_working_voice(self, announcement: Announcement) -> tuple[str, int]:
        """Play the text with the first voice that speaks it to the end; return its name, frames.

        A voice that fails, even halfway, hands the whole text to the next one: the listener may
        hear a beginning twice, but never loses the end.
        """
        problems: list[str] = []
        started = False
        for voice in self._voices:
            frames = 0
            try:
                async with contextlib.aclosing(voice.stream(announcement.text)) as chunks:
                    async for chunk in chunks:
                        if not started:
                            degraded = voice is not self._voices[0]
                            self._event(
                                "started", announcement, voice=voice.name, degraded=degraded
                            )
                            started = True
                        frames += len(chunk)
                        await self._output.play(chunk)
            except VoiceError as exc:
                where = "halfway" if frames else "before any audio"
                log.warning("voice %s failed %s on %s: %s", voice.name, where, announcement.id, exc)
                problems.append(f"{voice.name}: {exc}")
                continue
            if frames:
                return voice.name, frames
            problems.append(f"{voice.name}: produced no audio")
        raise VoiceError("no voice could speak: " + "; ".join(problems))

    def _event(self, kind: EventKind, announcement: Announcement, **details: object) -> None:
        self._emit(Event(kind, announcement.id, details=details))
