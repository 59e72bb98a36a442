"""Speaking one announcement: chime, voice, audio out, and its started/finished/failed events.

The Speaker is the one place that sequences the I/O of an announcement. It tries the voices in
order; a voice that fails hands the text to the next one, so a broken cloud voice never silences
the speaker while the local one works. The chime plays while the voice produces its first
audio, hiding the engine's first-byte time instead of adding to it.

Cancelling `speak` is how an announcement is interrupted (preempted, stopped, shut down): the
output is faded and dropped at once, and closing the voice stream tells the engine to stop.

The daemon waits for an audio device that is missing (a USB speaker not plugged in yet, or
pulled out): an announcement that cannot get the device waits for it, trying again every
`Delivery.device_retry_s`, and expires if its time to live runs out first; one that the device
fails halfway is spoken again from its start once the device works, up to
`DEVICE_FAULTS_MAX` times. Without `device_retry_s` (`herald say --local`) the device failing
fails the announcement at once.

An announcement that reached several rooms is agreed with the other rooms first (herald.rooms,
while the voice already runs and the amplifier warms up): its first sound is then placed on the
output at the agreed instant, and the output keeps it in step (herald.audio.alsa).

A voice that keeps its phrases (herald.voice.cached.CachedVoice, the cloud voices when the phrase
cache is on) is first asked to recall the exact text: that whole audio is played before the voice
is even asked to speak (no network, first samples within milliseconds). The Speaker tells these
voices whether each announcement finished completely, so that only a whole one's audio is kept;
an announcement with `cache: false` neither recalls nor keeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from dataclasses import dataclass

from herald.amp import Amplifier
from herald.announcement import Announcement
from herald.audio import AudioError, AudioSink
from herald.audio.dsp import Samples, apply_gain, ms_to_frames, silence
from herald.audio.loudness import Levelling, Loudness
from herald.duck import Ducker
from herald.events import EventKind, EventSink, about
from herald.logsafe import shown
from herald.rooms import Agreed, Synchroniser
from herald.voice.base import Voice, VoiceError
from herald.voice.cached import CachedVoice

log = logging.getLogger(__name__)

MEDIA = "media"  # the "voice" of an announcement that plays a URL, in its events and levels
REPEAT_PAUSE_MS = 600  # between the repeats of an announcement
# A round up to this long is repeated from memory (about 5.8 MB at 48 kHz), not asked of the
# voice again: no second wait for a cloud voice's first audio (late, in rooms kept in step).
REPEAT_FROM_MEMORY_S = 60
CACHED_CHUNK_MS = 40  # recalled audio goes out in pieces, so a resume position stays accurate
DEVICE_FAULTS_MAX = 3  # the device failing an announcement this often fails it for good
# How far the voice may run ahead of the chime: longer than any chime (at most 10 s), so a voice
# that is quick to start never waits on it, and small (about 1 MB at 48 kHz).
LOOKAHEAD_MS = 12_000
_END = object()


@dataclass(frozen=True)
class Delivery:
    """How announcements sound, from the config."""

    sample_rate: int
    volume: float = 1.0
    critical_min_volume: float = 0.7
    wake_preroll_ms: int = 0
    idle_after_s: float = 5.0
    chime_for: Callable[[Announcement], Awaitable[Samples | None]] = lambda _: asyncio.sleep(0)
    live_volume: Callable[[], float] | None = None  # the volume as set at run time, if any
    # Wait for an audio device that fails, trying it this often (None: fail at once).
    device_retry_s: float | None = None
    # Told why the device cannot be used when an announcement starts waiting for it, and None
    # once it works again (the status Home Assistant shows).
    device_problem: Callable[[str | None], None] = lambda _: None
    # Every voice and chime brought to one loudness (None: each plays at its own level).
    loudness: Loudness | None = None
    tail_ms: int = 0  # silence after the last sound, played out before the output stops
    amplifier: Amplifier | None = None  # switched on before the first sound, off when idle
    ducker: Ducker | None = None  # the other audio, lowered before the first sound
    keep_awake: Samples | None = None  # a second of inaudible tone, played while idle
    synchroniser: Synchroniser | None = None  # rooms in sync: when a shared one starts
    # Media from a URL (herald.media.stream_media, bound to the output's rate and the caps);
    # None: an announcement with a media URL fails.
    media: Callable[[str], AsyncGenerator[Samples, None]] | None = None

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
        self._keeping = [voice for voice in voices if isinstance(voice, CachedVoice)]
        self._last_sound_at = float("-inf")
        # Of the round being spoken (a repeat starts again at 0): where a resume starts.
        self.speech_seconds = 0.0
        self._heard_seconds = 0.0  # of the announcement being spoken, every round
        self._from_cache = False  # the round being spoken was recalled from the phrase cache
        self._humming: Humming | None = None  # the keep-awake tone, while idle
        self._agreed: Agreed | None = None  # when the one being spoken starts in every room

    def silence_now(self) -> None:
        """Fade and drop whatever is playing, before the speaking task even hears of it."""
        self._output.drop()

    async def speak(self, announcement: Announcement) -> bool:
        """Speak it to the end; True when it was heard, False when it failed or expired
        waiting for the audio device (with an event)."""
        await self._stop_keeping_awake()
        try:
            return await self._speak(announcement)
        finally:
            if self._delivery.amplifier is not None:
                self._delivery.amplifier.idle()
            if self._delivery.ducker is not None:
                self._delivery.ducker.idle()
            for cached in self._keeping:
                cached.forget()  # a cut-off or failed one's audio is never kept
            self._keep_awake()

    async def _speak(self, announcement: Announcement) -> bool:
        faults = 0
        while True:
            try:
                if not await self._wait_for_device(announcement):
                    return self._expired(announcement)
                voice = await self._speak_once(announcement)
                break
            except AudioError as exc:
                self._output.drop()
                faults += 1
                if self._delivery.device_retry_s is None or faults >= DEVICE_FAULTS_MAX:
                    return self._failed(announcement, exc)
                log.warning(
                    "announcement %s was cut off (%s); it is spoken again from its start",
                    announcement.id,
                    exc,
                )
            except VoiceError as exc:
                self._output.drop()
                return self._failed(announcement, exc)
            except asyncio.CancelledError:
                self._output.drop()
                raise
        self._finished(announcement, voice)
        return True

    def idle(self) -> None:
        """Nothing plays (the daemon has just started)."""
        self._keep_awake()

    def _keep_awake(self) -> None:
        """Idle now: with `audio.keep_awake`, play the inaudible tone until the next sound."""
        if self._delivery.keep_awake is not None and self._humming is None:
            self._humming = Humming(self._output, self._delivery.keep_awake)

    async def _stop_keeping_awake(self) -> None:
        humming, self._humming = self._humming, None
        if humming is not None:
            await humming.stop()

    async def aclose(self) -> None:
        """Stop the keep-awake tone (at the end of the run)."""
        await self._stop_keeping_awake()

    async def _wait_for_device(self, announcement: Announcement) -> bool:
        """Open the output: True once it is open; False when the announcement expired waiting
        for it. Without `device_retry_s`, a device that will not open raises AudioError."""
        retry_s = self._delivery.device_retry_s
        waited = False
        while True:
            try:
                await self._output.open()
            except AudioError as exc:
                if retry_s is None:
                    raise
                problem = exc
            else:
                if waited:
                    log.info("announcement %s: the audio device works again", announcement.id)
                self._delivery.device_problem(None)  # (it may have come back meanwhile)
                return True
            left = announcement.seconds_left(time.time())  # expiry: wall-clock time
            if left <= 0:
                return False
            if not waited:
                log.warning(
                    "announcement %s waits for the audio device: %s (trying again every %g s)",
                    announcement.id,
                    problem,
                    retry_s,
                )
                self._delivery.device_problem(str(problem))
                waited = True
            await asyncio.sleep(min(retry_s, left))

    async def _speak_once(self, announcement: Announcement) -> str:
        """Play it through once, on an open output; the name of the voice that spoke it."""
        self.speech_seconds = self._heard_seconds = 0.0
        for cached in self._keeping:
            cached.forget()  # spoken again from its start: asked again
        gain = self._delivery.gain_for(announcement)
        # The voice starts at once: its first audio comes while the amplifier warms up, the
        # music is lowered and the rooms agree, not after.
        first = self._begin_round(announcement, await self._delivery.chime_for(announcement))
        try:
            self._agreed = await self._make_room(announcement)
            if self._agreed is not None and self._agreed.at is not None:
                # In step with the other rooms: the first sound (silence before it) is placed
                # on this machine's clock, converted from the agreed wall-clock instant.
                self._output.place(time.monotonic() + self._agreed.at - time.time())
            else:
                await self._wake_output()
            keep_s = REPEAT_FROM_MEMORY_S if announcement.repeat > 1 else 0  # 0: nothing kept
            heard = _Heard(ms_to_frames(keep_s * 1000, self._rate))
            voice = await self._play_round(announcement, gain, first, heard)
            for _ in range(announcement.repeat - 1):
                await self._output.play(silence(ms_to_frames(REPEAT_PAUSE_MS, self._rate)))
                again = self._begin_round(announcement, None, heard.replay())
                voice = await self._play_round(announcement, gain, again)
            if self._delivery.tail_ms:  # the last word is heard out, then a little silence
                await self._output.play(silence(ms_to_frames(self._delivery.tail_ms, self._rate)))
            await self._output.finish()
            return voice
        finally:
            self._last_sound_at = self._clock()
            await first.stop()

    def _failed(self, announcement: Announcement, exc: Exception) -> bool:
        log.error("announcement %s failed: %s", announcement.id, exc)
        self._event("failed", announcement, reason=str(exc))
        return False

    def _expired(self, announcement: Announcement) -> bool:
        reason = "its time to live ran out while it waited for the audio device"
        log.warning("announcement %s expired: %s", announcement.id, reason)
        self._event("expired", announcement, reason=reason)
        return False

    def _finished(self, announcement: Announcement, voice: str) -> None:
        degraded = voice not in (self._voices[0].name, MEDIA)
        self._event(
            "finished",
            announcement,
            voice=voice,
            degraded=degraded,
            duration_s=round(self._heard_seconds, 3),
            **self._cached_detail(),
        )
        for cached in self._keeping:
            cached.keep()

    @property
    def _rate(self) -> int:
        return self._delivery.sample_rate

    async def _make_room(self, announcement: Announcement) -> Agreed | None:
        """Before the first sound: the amplifier on and warm, the other audio lowered, and,
        for an announcement to several rooms, the instant agreed with the others."""
        getting_ready: list[Awaitable[None]] = []
        if self._delivery.amplifier is not None:
            getting_ready.append(self._delivery.amplifier.power_on())
        if self._delivery.ducker is not None:
            getting_ready.append(self._delivery.ducker.duck(announcement.priority))
        synchroniser = self._delivery.synchroniser
        agreeing = synchroniser.agree(announcement) if synchroniser is not None else _nothing()
        agreed, *_ = await asyncio.gather(agreeing, *getting_ready)
        return agreed

    async def _wake_output(self) -> None:
        """Silence first when the output has been idle: many USB/HDMI amplifiers clip it."""
        idle = self._clock() - self._last_sound_at >= self._delivery.idle_after_s
        if idle and self._delivery.wake_preroll_ms:
            await self._output.play(
                silence(ms_to_frames(self._delivery.wake_preroll_ms, self._rate))
            )

    def _begin_round(
        self,
        announcement: Announcement,
        chime: Samples | None,
        heard_before: AsyncGenerator[tuple[str, Samples], None] | None = None,
    ) -> _Round:
        """One round set going: the voice runs ahead (its audio kept in a _Lookahead) until
        the round is played. The chime (if any) and the speech pass through one Levelling, in
        the order they are heard: the chime first. `heard_before`: the speech of an earlier
        round, levelled already, played again instead of asking the voice."""
        levelling = Levelling(self._delivery.loudness, self._rate)
        levelled_chime = None if chime is None else levelling.chime(chime)
        ahead = _Lookahead(ms_to_frames(LOOKAHEAD_MS, self._rate))
        speech = heard_before or self._speech(announcement, levelling)
        pump = asyncio.create_task(_pump(speech, ahead), name=f"voice-{announcement.id}")
        return _Round(levelled_chime, ahead, pump)

    async def _play_round(
        self, announcement: Announcement, gain: float, round_: _Round, heard: _Heard | None = None
    ) -> str:
        """The chime (if any) while the voice warms up, then the speech (kept in `heard`)."""
        try:
            if round_.chime is not None:
                await self._output.play(apply_gain(round_.chime, gain))
            return await self._play_speech(announcement, _drain(round_.ahead), gain, heard)
        finally:
            await round_.stop()

    async def _play_speech(
        self,
        announcement: Announcement,
        speech: AsyncGenerator[tuple[str, Samples], None],
        gain: float,
        heard: _Heard | None = None,
    ) -> str:
        voice = ""
        self.speech_seconds = 0.0
        async with contextlib.aclosing(speech):
            async for voice, chunk in speech:
                if self._heard_seconds == 0:
                    degraded = voice not in (self._voices[0].name, MEDIA)
                    self._event(
                        "started",
                        announcement,
                        voice=voice,
                        degraded=degraded,
                        **self._cached_detail(),
                        **(self._agreed.details() if self._agreed is not None else {}),
                    )
                self.speech_seconds += len(chunk) / self._rate
                self._heard_seconds += len(chunk) / self._rate
                if heard is not None:
                    heard.add(voice, chunk)
                await self._output.play(apply_gain(chunk, gain))
        return voice

    async def _speech(
        self, announcement: Announcement, levelling: Levelling
    ) -> AsyncGenerator[tuple[str, Samples], None]:
        """The text as audio from the first voice that speaks it to the end, levelled.

        A voice that fails, even halfway, hands the whole text to the next one: the listener may
        hear a beginning twice, but never loses the end. What a voice recalls of the text is
        played instead of asking the voice (and, being whole, is levelled exactly).
        """
        self._from_cache = False
        if announcement.media_url is not None:
            async for levelled in self._media(announcement.media_url, levelling):
                yield MEDIA, levelled
            return
        problems: list[str] = []
        for voice in self._voices:
            keeping = voice if isinstance(voice, CachedVoice) and announcement.cache else None
            recalled = None if keeping is None else await keeping.recall(announcement.text)
            if recalled is not None:
                self._from_cache = recalled.from_cache
                async for piece in self._whole(recalled.samples, levelling):
                    yield voice.name, piece
                return
            produced = False
            try:
                live = voice.stream if keeping is None else keeping.stream_keeping
                async with contextlib.aclosing(live(announcement.text)) as chunks:
                    async for chunk in chunks:
                        produced = True
                        if len(levelled := levelling.live(voice.name, chunk)):
                            yield voice.name, levelled
            except VoiceError as exc:
                where = "halfway" if produced else "before any audio"
                log.warning("voice %s failed %s on %s: %s", voice.name, where, announcement.id, exc)
                problems.append(f"{voice.name}: {exc}")
                levelling.restart()
                continue
            if produced:
                levelling.spoken_to_the_end(voice.name)
                if len(held := levelling.flush()):
                    yield voice.name, held
                return
            problems.append(f"{voice.name}: produced no audio")
        raise VoiceError("no voice could speak: " + "; ".join(problems))

    async def _whole(self, audio: Samples, levelling: Levelling) -> AsyncGenerator[Samples, None]:
        """Whole audio (recalled), levelled exactly (measured first), in CACHED_CHUNK_MS pieces."""
        gain = levelling.gain_of(audio)
        step = ms_to_frames(CACHED_CHUNK_MS, self._rate)
        for start in range(0, len(audio), step):
            if len(piece := levelling.push(audio[start : start + step], gain)):
                yield piece
        if len(held := levelling.flush()):
            yield held

    async def _media(self, url: str, levelling: Levelling) -> AsyncGenerator[Samples, None]:
        """The media at `url` as it downloads, levelled like a voice of its own."""
        if self._delivery.media is None:
            raise VoiceError("this speaker does not play media")
        produced = False  # (herald.media.MediaError is a VoiceError: it fails the announcement)
        async with contextlib.aclosing(self._delivery.media(url)) as chunks:
            async for chunk in chunks:
                produced = True
                if len(levelled := levelling.live(MEDIA, chunk)):
                    yield levelled
        if not produced:
            raise VoiceError("the media held no audio")
        levelling.spoken_to_the_end(MEDIA)
        if len(held := levelling.flush()):
            yield held

    def _cached_detail(self) -> dict[str, object]:
        return {"cached": True} if self._from_cache else {}

    def _event(self, kind: EventKind, announcement: Announcement, **details: object) -> None:
        self._emit(about(announcement, kind, details))


class Humming:
    """The keep-awake tone on the output, looped until stopped (paced by the device)."""

    def __init__(self, output: AudioSink, tone: Samples) -> None:
        self._output = output
        self._task = asyncio.create_task(self._hum(tone), name="keep-awake")

    async def _hum(self, tone: Samples) -> None:
        try:
            await self._output.open()
            while True:
                await self._output.play(tone)
        except AudioError as exc:
            log.debug("keep-awake: %s", exc)  # the next announcement reports the device

    async def stop(self) -> None:
        """Silence it at once: the next sound takes over the device."""
        try:
            await _cancel(self._task)
        finally:
            self._output.drop()


class _Heard:
    """A round's speech as it was played (levelled, before the volume), for the repeats; given
    up once it is longer than `limit_frames` (the voice is then asked again)."""

    def __init__(self, limit_frames: int) -> None:
        self._items: list[tuple[str, Samples]] | None = []
        self._frames = 0
        self._limit = limit_frames

    def add(self, voice: str, chunk: Samples) -> None:
        if self._items is None:
            return
        self._frames += len(chunk)
        if self._frames > self._limit:
            self._items = None
        else:
            self._items.append((voice, chunk))

    def replay(self) -> AsyncGenerator[tuple[str, Samples], None] | None:
        """The speech again, or None when it was too long to keep."""
        return None if self._items is None else _replayed(list(self._items))


async def _replayed(items: list[tuple[str, Samples]]) -> AsyncGenerator[tuple[str, Samples], None]:
    for item in items:
        yield item


@dataclass
class _Round:
    """One round of an announcement: its levelled chime, and its voice running ahead."""

    chime: Samples | None
    ahead: _Lookahead
    pump: asyncio.Task[None]

    async def stop(self) -> None:
        """The voice stops (its stream closed); idempotent."""
        await _cancel(self.pump)


class _Lookahead:
    """What the voice says while the chime plays, kept for when it is over: at most a few
    seconds of it. Then the voice waits, as it does while its audio plays: a long text costs
    a few seconds of audio in memory, not the whole text's (16 KiB of text is half an hour of
    speech; held whole, hundreds of MB)."""

    def __init__(self, limit_frames: int) -> None:
        self._items: deque[object] = deque()
        self._frames = 0
        self._limit = limit_frames
        self._taken = asyncio.Event()
        self._given = asyncio.Event()

    async def put(self, item: object) -> None:
        while self._frames >= self._limit:
            self._taken.clear()
            await self._taken.wait()
        self._items.append(item)
        self._frames += _frames_in(item)
        self._given.set()

    async def get(self) -> object:
        while not self._items:
            self._given.clear()
            await self._given.wait()
        item = self._items.popleft()
        self._frames -= _frames_in(item)
        self._taken.set()
        return item


async def _cancel(task: asyncio.Task[None]) -> None:
    """Cancel `task` and wait until it has ended; a cancellation of the caller's own, meanwhile,
    is passed on (not swallowed with the task's)."""
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        me = asyncio.current_task()
        if me is not None and me.cancelling():
            raise
    except Exception as exc:  # it had failed already: its failure was reported, or is moot now
        log.debug("a task that was stopped had failed: %r", exc)


async def _nothing() -> None:
    return None


def _frames_in(item: object) -> int:
    return len(item[1]) if isinstance(item, tuple) else 0


async def _pump(speech: AsyncGenerator[tuple[str, Samples], None], ahead: _Lookahead) -> None:
    """Run the voice ahead of the chime, keeping what it says until the chime is over."""
    try:
        async with contextlib.aclosing(speech):
            async for item in speech:
                await ahead.put(item)
                # A turn of the loop for the player: a voice whose frames are already buffered
                # (a socket that received faster than real time) would otherwise run on without
                # suspending, and the first audio would reach the device only after all of it.
                await asyncio.sleep(0)
    except VoiceError as exc:
        await ahead.put(exc)
        return
    except Exception as exc:  # a bug must fail this announcement (with its event), not hang it
        log.error("the voice failed unexpectedly: %s", shown(repr(exc), 200))
        log.debug("the failure was here", exc_info=True)
        await ahead.put(VoiceError(f"internal error: {type(exc).__name__}"))
        return
    await ahead.put(_END)


async def _drain(ahead: _Lookahead) -> AsyncGenerator[tuple[str, Samples], None]:
    while (item := await ahead.get()) is not _END:
        if isinstance(item, VoiceError):
            raise item
        assert isinstance(item, tuple)
        yield item
