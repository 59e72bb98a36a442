"""ALSA playback from one dedicated thread, fed period by period from the event loop.

The thread owns the PCM handle: it opens, writes, drops and closes it, so alsa-lib is never
entered from two threads. The event loop talks to it through a command queue. Back-pressure is a
semaphore of "credits", one per queued period, that the thread gives back as it writes; so at most
`periods` periods wait in Python on top of the ALSA buffer itself, and a drop() silences the
device within about one period.

A device that goes away (a USB speaker unplugged, a sound server gone) makes alsa-lib fail in
whatever the thread is doing. The thread then closes the PCM and carries on: the sound being
played fails with an AudioError (once, to whoever plays it: a failure belongs to the
"generation" of the sound that met it, so it never leaks into the next one after a drop), and
the next open() opens the device afresh.

A sound can be placed (`place`, for rooms in sync): its first frame is heard at a given instant.
The thread writes silence before it until ALSA's own delay (snd_pcm_delay: every frame queued
in alsa-lib, the plugins and the sound server or card) says the next frame lands there, or skips
what is already due; and from then on keeps the sound in step with the clock, skipping what a
late voice missed and filling what a fast card ran ahead by, beyond SYNC_SLACK_MS.

A device can also hang instead of failing (a sound server that stops answering, a USB driver
that wedges): a write then never returns, or the buffer never plays out. The thread marks each
call into alsa-lib, and each wait for the buffer to play, with the time it began (for the wait:
the time the device last played something), so `blocked()` and `hung()` tell from outside how
long it has been stuck; the systemd watchdog stops on it. A hung device's thread cannot be
stopped, so close() gives up on it after CLOSE_WAIT_S instead of hanging the daemon's exit.

alsa-lib prints its own errors to stderr ("ALSA lib pulse.c:242:(pulse_connect) ...") on top of
the AudioError Herald logs; `route_alsa_lib_errors()` sends them to the debug log instead.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import ctypes
import errno
import logging
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from herald.audio import AudioError
from herald.audio.dsp import Samples, silence, upmix
from herald.config import AudioConfig
from herald.timing import HANG_AFTER_S

log = logging.getLogger(__name__)

_UNDERRUN = -errno.EPIPE  # pyalsaaudio returns -EPIPE after preparing the PCM again
FADE_MS = 8  # a drop fades out over this long instead of cutting (a cut clicks)
CLOSE_WAIT_S = 1.0  # close() waits this long for a thread that is stuck on the device
SYNC_SLACK_MS = 2  # a placed sound further out of step with the clock than this is put back
# ... once that many readings in a row say so (one reading can be off: a thread descheduled
# between reading the delay and writing), or at once when it is off by more than SYNC_JUMP_MS
# (a voice that came late, a device that ran dry).
SYNC_CONFIRM = 3
SYNC_JUMP_MS = 20
_T = TypeVar("_T")


@dataclass(frozen=True)
class _Open:
    done: asyncio.Future[None]


@dataclass(frozen=True)
class _Write:
    generation: int
    data: bytes


@dataclass(frozen=True)
class _Finish:
    generation: int
    done: asyncio.Future[None]


@dataclass(frozen=True)
class _Drop:
    asked_at: float  # time.monotonic() when drop() was called: the start of every measure


@dataclass(frozen=True)
class _Close:
    done: asyncio.Future[None] | None


@dataclass(frozen=True)
class _Place:
    generation: int
    at: float  # time.monotonic() when the next frame written is to be heard


_Command = _Open | _Write | _Finish | _Drop | _Close | _Place


@dataclass
class _Anchor:
    """A placed sound, in the output thread: its frame n is heard at `at` + n / rate."""

    generation: int
    at: float  # when its first frame reaches ALSA's far end (the latency offset taken off)
    frames: int = 0  # frames of it written or skipped so far
    skipped: int = 0
    inserted: int = 0  # frames of silence written after its start to keep it in step
    off: int = 0  # readings in a row out of step: positive late, negative early


def open_pcm(cfg: AudioConfig) -> Any:
    """Open the configured playback PCM with Herald's format, or raise AudioError naming it."""
    import alsaaudio  # lazily: `herald say --output` works where alsa-lib is missing

    route_alsa_lib_errors()
    try:
        pcm = alsaaudio.PCM(
            type=alsaaudio.PCM_PLAYBACK,
            mode=alsaaudio.PCM_NORMAL,
            device=cfg.device,
            rate=cfg.sample_rate,
            channels=cfg.channels,
            format=alsaaudio.PCM_FORMAT_S16_LE,
            periodsize=cfg.period_frames,
            periods=cfg.periods,
        )
    except alsaaudio.ALSAAudioError as exc:
        raise AudioError(f"cannot open ALSA device '{cfg.device}': {exc}") from None
    info = pcm.info()
    wrong = _mismatch(cfg, info)
    if wrong:
        pcm.close()
        raise AudioError(f"ALSA device '{cfg.device}' {wrong}")
    return pcm


def _mismatch(cfg: AudioConfig, info: dict[str, Any]) -> str | None:
    if info["format_name"] != "S16_LE":
        return f"does not take S16_LE samples (it offers {info['format_name']})"
    if info["rate"] != cfg.sample_rate:
        return (
            f"does not run at {cfg.sample_rate} Hz (it offers {info['rate']} Hz): "
            f"set audio.sample_rate = {info['rate']}, or use a 'plughw:' or 'default' PCM"
        )
    if info["channels"] != cfg.channels:
        return (
            f"does not take {cfg.channels} channel(s) (it offers {info['channels']}): "
            f"set audio.channels = {info['channels']}"
        )
    return None


class AlsaOutput:
    """An AudioSink that plays on an ALSA PCM."""

    def __init__(self, cfg: AudioConfig) -> None:
        self._cfg = cfg
        self._commands: queue.SimpleQueue[_Command] = queue.SimpleQueue()
        self._generation = 0
        self._pending = silence(0)  # interleaved samples short of a whole period
        self._credits: asyncio.Semaphore | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._failure: tuple[int, AudioError] | None = None  # (generation, what went wrong)
        self.problem: str | None = None  # why the device is not usable now; None once it opens
        self._wake = threading.Event()  # cuts a wait for the buffer to play out short
        # What the thread wrote last, a buffer's worth and a period: where a fade starts from.
        self._recent: deque[bytes] = deque(maxlen=cfg.periods + 1)
        self._dropped_at: tuple[float, float] | None = None  # (asked, silent) of the last drop
        self.underruns = 0
        self.skipped_ms = 0.0  # of the last placed sound: how much of it came too late to play
        # What the thread waits on the device for, and since when (time.monotonic()); None when
        # it is not in a call into alsa-lib. Replaced whole, so the event loop reads it safely.
        self._busy: tuple[str, float] | None = None
        self._anchor: _Anchor | None = None  # the placed sound being played (thread only)
        self._delay: Callable[[], int | None] | None = None  # snd_pcm_delay of the open PCM

    @property
    def _period_samples(self) -> int:
        return self._cfg.period_frames * self._cfg.channels

    async def open(self) -> None:
        if self._thread is None:
            self._loop = asyncio.get_running_loop()
            self._credits = asyncio.Semaphore(self._cfg.periods)
            self._thread = threading.Thread(target=self._run, name="alsa-out", daemon=True)
            self._thread.start()
        done: asyncio.Future[None] = self._loop_or_fail().create_future()
        self._commands.put(_Open(done))
        await done

    async def play(self, samples: Samples) -> None:
        self._raise_pending_error()
        frames = upmix(samples, self._cfg.channels)
        buffered = np.concatenate((self._pending, frames))
        whole = len(buffered) - len(buffered) % self._period_samples
        self._pending = buffered[whole:]
        for start in range(0, whole, self._period_samples):
            await self._send(buffered[start : start + self._period_samples])

    async def finish(self) -> None:
        if len(self._pending):
            padding = silence(self._period_samples - len(self._pending))
            period, self._pending = np.concatenate((self._pending, padding)), silence(0)
            await self._send(period)
        done: asyncio.Future[None] = self._loop_or_fail().create_future()
        self._commands.put(_Finish(self._generation, done))
        await done
        self._raise_pending_error()

    def place(self, at: float) -> None:
        self._commands.put(_Place(self._generation, at))

    def drop(self) -> None:
        self._generation += 1
        self._pending = silence(0)
        self._wake.set()
        self._commands.put(_Drop(time.monotonic()))

    async def close(self) -> None:
        if self._thread is None:
            return
        self.drop()
        done: asyncio.Future[None] = self._loop_or_fail().create_future()
        self._commands.put(_Close(done))
        try:
            await asyncio.wait_for(asyncio.shield(done), CLOSE_WAIT_S)
        except TimeoutError:
            blocked = self.blocked()
            if blocked is None or blocked[1] < CLOSE_WAIT_S:
                await done  # busy, but not stuck on the device: it gets there
            else:
                # Stuck in alsa-lib, which cannot be interrupted: leave the thread (a daemon
                # thread) to it rather than hang the daemon's stop or reload with it.
                log.warning("audio: %s; closing without it", self._stuck(*blocked))
                self._thread = None
                return
        self._thread.join(timeout=2)
        self._thread = None

    def blocked(self) -> tuple[str, float] | None:
        """What the output thread waits on the device for, and for how many seconds; None when
        it waits on nothing (idle, or between calls). Waiting for the buffer to play out counts
        from the last time the device played some of it: a device that plays is not stuck."""
        busy = self._busy  # one read: the thread replaces it
        if busy is None:
            return None
        what, since = busy
        return what, time.monotonic() - since

    def hung(self, after_s: float = HANG_AFTER_S) -> str | None:
        """Why the device is hung (blocked for more than `after_s`), or None."""
        blocked = self.blocked()
        if blocked is None or blocked[1] <= after_s:
            return None
        return self._stuck(*blocked)

    def _stuck(self, what: str, seconds: float) -> str:
        return f"ALSA device '{self._cfg.device}' has been stuck for {seconds:.0f} s {what}"

    async def _send(self, period: Samples) -> None:
        assert self._credits is not None
        generation = self._generation
        await self._credits.acquire()
        if generation != self._generation or self._failure_now() is not None:
            self._credits.release()  # dropped, or the device failed, while waiting for room
            self._raise_pending_error()
            return
        self._commands.put(_Write(generation, period.astype("<i2").tobytes()))

    def _loop_or_fail(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            raise AudioError(f"ALSA device '{self._cfg.device}' is not open")
        return self._loop

    def _failure_now(self) -> AudioError | None:
        """The failure of the sound being played now (not of one dropped since)."""
        failure = self._failure  # one read: the thread may replace it meanwhile
        if failure is None or failure[0] != self._generation:
            return None
        return failure[1]

    def _raise_pending_error(self) -> None:
        if (error := self._failure_now()) is not None:
            raise error

    # --- everything below runs in the output thread -------------------------------------------

    def _on_device(self, what: str, call: Callable[..., _T], *args: Any) -> _T:
        """call(*args): a call into alsa-lib, which may block; marked for blocked() meanwhile."""
        before = self._busy
        self._busy = (what, time.monotonic())
        try:
            return call(*args)
        finally:
            self._busy = before

    def _run(self) -> None:
        pcm: Any = None
        while True:
            command = self._commands.get()
            if isinstance(command, _Close):
                self._anchor, self._delay = None, None
                if pcm is not None:
                    self._on_device("closing it", _close_quietly, pcm)
                if command.done is not None:
                    self._resolve(command.done, None)
                return
            try:
                pcm = self._carry_out(pcm, command)
            except Exception as exc:  # alsaaudio.ALSAAudioError: the device went away
                self._device_failed(pcm, command, exc)
                pcm = None

    def _carry_out(self, pcm: Any, command: _Open | _Write | _Finish | _Drop | _Place) -> Any:
        """One command with the PCM as it is; the PCM as it is afterwards (None: closed)."""
        if isinstance(command, _Open):
            return self._open_in_thread(pcm, command.done)
        if isinstance(command, _Write):
            return self._write_in_thread(pcm, command)
        if isinstance(command, _Finish):
            self._finish_in_thread(pcm, command)
        elif isinstance(command, _Place):
            if command.generation == self._generation:
                offset_s = self._cfg.latency_offset_ms / 1000
                self._anchor = _Anchor(command.generation, command.at - offset_s)
        else:
            self._anchor = None
            self._wake.clear()
            if pcm is not None and self._drop_with_fade(pcm):
                self._dropped_at = (command.asked_at, time.monotonic())
        return pcm

    def _device_failed(
        self, pcm: Any, command: _Open | _Write | _Finish | _Drop | _Place, exc: Exception
    ) -> None:
        """alsa-lib failed: close the PCM (the next open opens it afresh), and tell whoever
        plays the sound it was for; a sound that was being dropped has nobody to tell."""
        message = f"ALSA device '{self._cfg.device}' failed: {exc}"
        self._anchor, self._delay = None, None
        if pcm is not None:
            self._on_device("closing it", _close_quietly, pcm)
        if isinstance(command, _Write | _Finish):
            self._fail(command.generation, message)
        else:
            log.error("audio: %s", message)
            self.problem = message
        if isinstance(command, _Open):
            self._resolve(command.done, AudioError(message))
        elif isinstance(command, _Finish):
            self._resolve(command.done, None)  # finish() raises the failure

    def _open_in_thread(self, pcm: Any, done: asyncio.Future[None]) -> Any:
        if pcm is not None:
            self._resolve(done, None)
            return pcm
        try:
            pcm = self._on_device("opening it", open_pcm, self._cfg)
        except AudioError as exc:
            self.problem = str(exc)
            self._resolve(done, exc)
            return None
        self.problem = None
        # Stopped at once, as after a sound: the PulseAudio plugin reports a delay of 0 for
        # good when the first write comes long after the open (and only then).
        self._on_device("stopping it", pcm.drop)
        self._delay = delay_reader(pcm, self._cfg)
        info = pcm.info()
        log.info(
            "audio: opened ALSA device '%s' (%d Hz, %d ch, period %d frames, buffer %d frames)",
            self._cfg.device,
            info["rate"],
            info["channels"],
            info["period_size"],
            info["buffer_size"],
        )
        self._resolve(done, None)
        return pcm

    def _write_in_thread(self, pcm: Any, command: _Write) -> Any:
        try:
            if pcm is None or command.generation != self._generation:
                return pcm
            data = command.data
            if (anchor := self._anchor) is not None and anchor.generation == command.generation:
                data = self._in_step(pcm, anchor, data)
                if command.generation != self._generation:
                    return pcm  # dropped while its silence was written
            self._write_period(pcm, data)
            self._recent.append(data)
            if self._dropped_at is not None:
                self._report_switch(*self._dropped_at)
            return pcm
        finally:
            self._give_credit()

    def _write_period(self, pcm: Any, data: bytes) -> None:
        frames_left = len(data) // (2 * self._cfg.channels)
        view = memoryview(data)
        while frames_left > 0:
            written = self._on_device("writing to it", pcm.write, view)
            if written == _UNDERRUN:
                # The device ran dry; pyalsaaudio has prepared it again, so the same period is
                # written once more and playback resumes after a gap of at most one period.
                self.underruns += 1
                log.debug("audio: underrun on '%s', recovered", self._cfg.device)
                continue
            if written <= 0:
                raise AudioError(f"write returned {written}")
            frames_left -= written
            view = view[written * 2 * self._cfg.channels :]

    def _finish_in_thread(self, pcm: Any, command: _Finish) -> None:
        if pcm is not None and command.generation == self._generation:
            self._wait_until_played(pcm, self._wake)
            if command.generation == self._generation:
                # The buffer is empty: stop cleanly instead of underrunning.
                self._on_device("stopping it", pcm.drop)
                self._recent.clear()
        self._report_placement()
        self._resolve(command.done, None)

    # --- a placed sound (rooms in sync) ----------------------------------------------------------

    def _in_step(self, pcm: Any, anchor: _Anchor, data: bytes) -> bytes:
        """What to write of `data` (the next part of a placed sound) so that it is heard in its
        place: silence first if it would come early, its beginning skipped if it would be late.
        At the sound's start exactly; later, when off by more than SYNC_SLACK_MS (see
        SYNC_CONFIRM)."""
        frame_bytes = 2 * self._cfg.channels
        starting = anchor.frames == 0
        if starting and not self._silence_until_placed(pcm, anchor):
            return data
        late = self._frames_late(pcm, anchor)
        if not starting and not self._confirmed(anchor, late):
            late = 0
        if late < 0:  # the card runs ahead of the clock: a moment of silence
            silence = min(-late, self._cfg.period_frames)
            self._write_period(pcm, bytes(silence * frame_bytes))
            anchor.inserted += silence if not starting else 0
        elif late > 0:  # the sound came late (a slow voice, a device that ran dry): skip
            skip = min(late, len(data) // frame_bytes)
            data = data[skip * frame_bytes :]
            anchor.frames += skip
            anchor.skipped += skip
        anchor.frames += len(data) // frame_bytes
        return data

    def _confirmed(self, anchor: _Anchor, late: int) -> bool:
        """Whether being `late` frames out of step (after the start) is to be corrected now."""
        rate = self._cfg.sample_rate
        slack = rate * SYNC_SLACK_MS // 1000
        direction = (late > slack) - (late < -slack)
        if direction == 0:
            anchor.off = 0
            return False
        anchor.off = anchor.off + direction if anchor.off * direction > 0 else direction
        if abs(anchor.off) >= SYNC_CONFIRM or abs(late) > rate * SYNC_JUMP_MS // 1000:
            anchor.off = 0
            return True
        return False

    def _silence_until_placed(self, pcm: Any, anchor: _Anchor) -> bool:
        """Write silence, a period at a time (a drop ends it), until the next frame lands in
        the sound's place. False when the output takes silence without playing it (a file has
        no clock): the sound is then not placed."""
        period = self._cfg.period_frames
        late = self._frames_late(pcm, anchor)
        allowed = max(-late, 0) + period
        while late < 0 and anchor.generation == self._generation:
            count = min(-late, period)
            if count > allowed:
                log.debug("audio: '%s' plays without a clock: not placed", self._cfg.device)
                self._anchor = None
                return False
            self._write_period(pcm, bytes(count * 2 * self._cfg.channels))
            allowed -= count
            if count < period:
                break  # in its place, to within the measurement
            late = self._frames_late(pcm, anchor)
        return True

    def _frames_late(self, pcm: Any, anchor: _Anchor) -> int:
        """How many frames after its place the next frame written would be heard (negative:
        early)."""
        delay = self._delay() if self._delay is not None else None
        queued = delay if delay is not None and delay >= 0 else self._queued_frames(pcm)
        heard_at = time.monotonic() + queued / self._cfg.sample_rate
        due_at = anchor.at + anchor.frames / self._cfg.sample_rate
        return round((heard_at - due_at) * self._cfg.sample_rate)

    def _report_placement(self) -> None:
        """A placed sound has played out: say how much of it was skipped to stay in step."""
        anchor, self._anchor = self._anchor, None
        if anchor is None:
            return
        rate = self._cfg.sample_rate
        self.skipped_ms = anchor.skipped * 1000 / rate
        if self.skipped_ms >= 1:
            log.info("audio: joined %.0f ms late, in step (the sound was not ready in time)",
                     self.skipped_ms)  # fmt: skip
        if anchor.inserted:
            log.debug("audio: %.1f ms of silence kept the sound in step (the card ran ahead)",
                      anchor.inserted * 1000 / rate)  # fmt: skip

    def _queued_frames(self, pcm: Any) -> int:
        """Frames written but not yet played (0 after an underrun)."""
        avail = self._on_device("asking it how much has played", pcm.avail)
        buffer_frames: int = pcm.info()["buffer_size"]
        return max(buffer_frames - avail, 0) if 0 <= avail <= buffer_frames else 0

    def _wait_until_played(self, pcm: Any, interrupt: threading.Event | None) -> None:
        before, left = self._busy, None
        try:
            while (queued := self._queued_frames(pcm)) > 0:
                if left is None or queued < left:  # it plays: not stuck, however long it takes
                    self._busy, left = ("waiting for its buffer to play", time.monotonic()), queued
                # A timed wait on an event, not a poll: drop() sets it to end the wait early.
                wait_s = queued / self._cfg.sample_rate + 0.002
                if interrupt is not None and interrupt.wait(wait_s):
                    return
                if interrupt is None:
                    time.sleep(wait_s)
        finally:
            self._busy = before

    def _report_switch(self, asked_at: float, silent_at: float) -> None:
        """Log how fast a drop silenced the device and the next sound began (once per drop)."""
        self._dropped_at = None
        now = time.monotonic()
        log.info(
            "audio: silent %.1f ms after the drop was asked for; next sound %.1f ms later",
            (silent_at - asked_at) * 1000,
            (now - silent_at) * 1000,
        )

    def _drop_with_fade(self, pcm: Any) -> bool:
        """Silence the device now: drop what is buffered, but fade out instead of cutting.

        The fade continues the sound from the frame that was about to play, so the listener
        hears the voice die away over a few milliseconds rather than a click. True when a sound
        was playing (or had just run dry in an underrun): the switch is then worth reporting.
        """
        channels = self._cfg.channels
        was_playing = bool(self._recent)
        queued = self._queued_frames(pcm)
        recent = np.frombuffer(b"".join(self._recent), dtype="<i2")
        self._recent.clear()
        self._on_device("stopping it", pcm.drop)
        fade_frames = self._cfg.sample_rate * FADE_MS // 1000
        start = len(recent) - queued * channels
        segment = recent[max(start, 0) : max(start, 0) + fade_frames * channels]
        if queued <= 0 or len(segment) < channels:
            return was_playing  # nothing left in the buffer: silent already
        frames = segment.reshape(-1, channels).astype(np.float64)
        ramp = np.cos(np.linspace(0, np.pi / 2, len(frames)))[:, None]
        faded = np.round(frames * ramp).astype("<i2").tobytes()
        try:
            self._write_period(pcm, faded)
            self._wait_until_played(pcm, None)
        finally:
            self._on_device("stopping it", pcm.drop)
        return True

    def _fail(self, generation: int, message: str) -> None:
        log.error("audio: %s", message)
        self.problem = message
        self._failure = (generation, AudioError(message))

    def _give_credit(self) -> None:
        if self._credits is not None and self._loop is not None:
            self._call_in_loop(self._credits.release)

    def _resolve(self, done: asyncio.Future[None], error: Exception | None) -> None:
        def settle() -> None:
            if done.done():
                return
            if error is None:
                done.set_result(None)
            else:
                done.set_exception(error)

        self._call_in_loop(settle)

    def _call_in_loop(self, callback: Any) -> None:
        assert self._loop is not None
        # A closed loop raises RuntimeError: nobody waits for the answer any more.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(callback)


def _close_quietly(pcm: Any) -> None:
    try:
        pcm.close()
    except Exception as exc:  # already broken; closing is only tidying up
        log.debug("audio: closing a failed PCM: %s", exc)


# --- ALSA's delay, which pyalsaaudio does not wrap ----------------------------------------------


class _PyAlsaPcm(ctypes.Structure):
    """The start of pyalsaaudio's PCM object (`alsapcm_t` in its alsaaudio.c, 0.11): enough to
    reach the snd_pcm_t it holds. Checked field by field against what was opened before the
    handle is used (another layout is not used at all)."""

    _fields_ = [
        ("ob_refcnt", ctypes.c_ssize_t),
        ("ob_type", ctypes.c_void_p),
        ("pcmtype", ctypes.c_long),
        ("pcmmode", ctypes.c_int),
        ("cardname", ctypes.c_char_p),
        ("handle", ctypes.c_void_p),
        ("channels", ctypes.c_int),
        ("rate", ctypes.c_uint),
    ]


def delay_reader(pcm: Any, cfg: AudioConfig) -> Callable[[], int | None] | None:
    """snd_pcm_delay() of an open pyalsaaudio PCM: the frames between now and the moment the
    next frame written is heard (the whole chain: alsa-lib's buffer, plugins, a sound server).
    None when it cannot be had (the fill of the buffer is then the estimate)."""
    try:
        library = ctypes.CDLL("libasound.so.2")
        snd_pcm_delay = library.snd_pcm_delay
    except (OSError, AttributeError):
        return None
    snd_pcm_delay.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_long)]
    snd_pcm_delay.restype = ctypes.c_int
    layout = _PyAlsaPcm.from_address(id(pcm))
    # The numbers first (reading them cannot fault); the name pointer only once they match.
    if (layout.pcmtype, layout.pcmmode, layout.channels, layout.rate) != (
        0,
        0,
        cfg.channels,
        cfg.sample_rate,
    ) or layout.cardname != cfg.device.encode():
        log.info("audio: this pyalsaaudio does not show ALSA's delay; the buffer's fill is used")
        return None
    handle = layout.handle

    def delay() -> int | None:
        frames = ctypes.c_long()
        return frames.value if snd_pcm_delay(handle, ctypes.byref(frames)) >= 0 else None

    return delay


def playback_devices() -> list[str]:
    """Names of the ALSA PCMs that can play (as `aplay -L` lists them)."""
    import alsaaudio

    route_alsa_lib_errors()
    return list(alsaaudio.pcms(alsaaudio.PCM_PLAYBACK))


# --- alsa-lib's own error messages --------------------------------------------------------------

# snd_lib_error_handler_t: (file, line, function, err, fmt, ...). The arguments after fmt are
# variadic, and a ctypes callback cannot read those: the message is logged as its format string.
_ErrorHandler = ctypes.CFUNCTYPE(
    None, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p
)
_routing = threading.Lock()
_routed: dict[str, Any] = {}  # "handler": the callback once tried; alsa-lib holds it, so must we


def route_alsa_lib_errors() -> None:
    """Send what alsa-lib prints to stderr ("ALSA lib pulse.c:242:(pulse_connect) PulseAudio:
    Unable to connect: ...", on every failed open) to the debug log instead: Herald logs the
    failure itself, once. Idempotent; without libasound (or its handler hook), does nothing."""
    with _routing:
        if "handler" in _routed:
            return
        _routed["handler"] = None  # tried: whatever happens, once
        try:
            library = ctypes.CDLL("libasound.so.2")
            set_handler = library.snd_lib_error_set_handler
            set_handler.argtypes = [_ErrorHandler]
            set_handler.restype = ctypes.c_int
            handler = _ErrorHandler(_alsa_lib_error)
            if set_handler(handler) != 0:
                return
        except (OSError, AttributeError, MemoryError):
            return
        _routed["handler"] = handler
        # alsa-lib's own handler again at exit: no call into an interpreter being finalized.
        atexit.register(set_handler, _ErrorHandler())


def _alsa_lib_error(
    file: bytes | None, line: int, function: bytes | None, err: int, fmt: bytes | None
) -> None:
    with contextlib.suppress(Exception):  # called from C: an exception could only be printed
        log.debug(
            "alsa-lib %s:%d (%s) %s%s",
            (file or b"?").decode(errors="replace"),
            line,
            (function or b"?").decode(errors="replace"),
            (fmt or b"").decode(errors="replace").strip(),
            f": {os.strerror(abs(err))}" if err else "",
        )
