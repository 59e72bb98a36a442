"""Speaking one announcement: chime, voice, audio out, and its started/finished/failed events.

The Speaker is the one place that sequences the I/O of an announcement. It tries the voices in
order; a voice that fails hands the text to the next one, so a broken cloud voice never silences
the speaker while the local one works. The chime plays while the voice produces its first
audio, hiding the engine's first-byte time instead of adding to it.

Cancelling `speak` is how an announcement is interrupted (preempted, stopped, shut down): the
output is faded and dropped at once, and closing the voice stream tells the engine to stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import dataclass

from herald.announcement import Announcement
from herald.audio import AudioError, AudioSink
from herald.audio.dsp import Samples, apply_gain, ms_to_frames, silence
from herald.events import Event, EventKind, EventSink
from herald.voice.base import Voice, VoiceError

log = logging.getLogger(__name__)

REPEAT_PAUSE_MS = 600  # between the repeats of an announcement
_END = object()


@dataclass(frozen=True)
class Delivery:
    """How announcements sound, from the config."""

    sample_rate: int
    volume: float = 1.0
    critical_min_volume: float = 0.7
    wake_preroll_ms: int = 0
    idle_after_s: float = 5.0
    chime_for: Callable[[Announcement], Samples | None] = lambda _: None
    live_volume: Callable[[], float] | None = None  # the volume as set at run time, if any

    def gain_for(self, announcement: Announcement) -> float:
        default = self.volume if self.live_volume is None else self.live_volume()
        gain = default if announcement.volume is None else announcement.volume
        if announcement.level == "critical":
            gain = max(gain, self.critical_min_volume)
        return gain


class Speaker:
    def __init__(
        self,
        voices: Sequence[Voice],
        output: AudioSink,
        emit: EventSink,
        delivery: Delivery,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not voices:
            raise ValueError("a Speaker needs at least one voice")
        self._voices = voices
        self._output = output
        self._emit = emit
        self._delivery = delivery
        self._clock = clock
        self._last_sound_at = float("-inf")
        self.speech_seconds = 0.0  # of the announcement being spoken: where a resume starts

    def silence_now(self) -> None:
        """Fade and drop whatever is playing, before the speaking task even hears of it."""
        self._output.drop()

    async def speak(self, announcement: Announcement) -> bool:
        """Speak it to the end; True when it was heard, False when it failed (with an event)."""
        self.speech_seconds = 0.0
        gain = self._delivery.gain_for(announcement)
        try:
            await self._output.open()
            await self._wake_amplifier()
            voice = ""
            for round_ in range(announcement.repeat):
                if round_:
                    await self._output.play(silence(ms_to_frames(REPEAT_PAUSE_MS, self._rate)))
                chime = self._delivery.chime_for(announcement) if round_ == 0 else None
                voice = await self._say(announcement, gain, chime)
            await self._output.finish()
        except (AudioError, VoiceError) as exc:
            self._output.drop()
            log.error("announcement %s failed: %s", announcement.id, exc)
            self._event("failed", announcement, reason=str(exc))
            return False
        except asyncio.CancelledError:
            self._output.drop()
            raise
        finally:
            self._last_sound_at = self._clock()
        degraded = voice != self._voices[0].name
        self._event(
            "finished",
            announcement,
            voice=voice,
            degraded=degraded,
            duration_s=round(self.speech_seconds, 3),
        )
        return True

    @property
    def _rate(self) -> int:
        return self._delivery.sample_rate

    async def _wake_amplifier(self) -> None:
        """Silence first when the output has been idle: many USB/HDMI amplifiers clip it."""
        idle = self._clock() - self._last_sound_at >= self._delivery.idle_after_s
        if idle and self._delivery.wake_preroll_ms:
            await self._output.play(
                silence(ms_to_frames(self._delivery.wake_preroll_ms, self._rate))
            )

    async def _say(self, announcement: Announcement, gain: float, chime: Samples | None) -> str:
        """One round: the chime (if any) while the voice warms up, then the speech."""
        speech = self._speech(announcement)
        if chime is None:
            return await self._play_speech(announcement, speech, gain)
        ahead: asyncio.Queue[object] = asyncio.Queue()
        pump = asyncio.create_task(_pump(speech, ahead), name=f"voice-{announcement.id}")
        try:
            await self._output.play(apply_gain(chime, gain))
            return await self._play_speech(announcement, _drain(ahead), gain)
        finally:
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pump

    async def _play_speech(
        self,
        announcement: Announcement,
        speech: AsyncGenerator[tuple[str, Samples], None],
        gain: float,
    ) -> str:
        voice = ""
        async with contextlib.aclosing(speech):
            async for voice, chunk in speech:
                if self.speech_seconds == 0:
                    degraded = voice != self._voices[0].name
                    self._event("started", announcement, voice=voice, degraded=degraded)
                self.speech_seconds += len(chunk) / self._rate
                await self._output.play(apply_gain(chunk, gain))
        return voice

    async def _speech(
        self, announcement: Announcement
    ) -> AsyncGenerator[tuple[str, Samples], None]:
        """The text as audio from the first voice that speaks it to the end.

        A voice that fails, even halfway, hands the whole text to the next one: the listener may
        hear a beginning twice, but never loses the end.
        """
        problems: list[str] = []
        for voice in self._voices:
            produced = False
            try:
                async with contextlib.aclosing(voice.stream(announcement.text)) as chunks:
                    async for chunk in chunks:
                        produced = True
                        yield voice.name, chunk
            except VoiceError as exc:
                where = "halfway" if produced else "before any audio"
                log.warning("voice %s failed %s on %s: %s", voice.name, where, announcement.id, exc)
                problems.append(f"{voice.name}: {exc}")
                continue
            if produced:
                return
            problems.append(f"{voice.name}: produced no audio")
        raise VoiceError("no voice could speak: " + "; ".join(problems))

    def _event(self, kind: EventKind, announcement: Announcement, **details: object) -> None:
        self._emit(Event(kind, announcement.id, details=details))


async def _pump(
    speech: AsyncGenerator[tuple[str, Samples], None], ahead: asyncio.Queue[object]
) -> None:
    """Run the voice ahead of the chime, keeping what it says until the chime is over."""
    try:
        async with contextlib.aclosing(speech):
            async for item in speech:
                ahead.put_nowait(item)
    except VoiceError as exc:
        ahead.put_nowait(exc)
        return
    ahead.put_nowait(_END)


async def _drain(ahead: asyncio.Queue[object]) -> AsyncGenerator[tuple[str, Samples], None]:
    while (item := await ahead.get()) is not _END:
        if isinstance(item, VoiceError):
            raise item
        assert isinstance(item, tuple)
        yield item
