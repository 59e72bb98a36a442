"""The Dispatcher and the Speaker in the test's own event loop, on virtual time: priorities in ms.

A real `Dispatcher`, `Speaker` and `Scheduler` run on a `VirtualTimeLoop`, an asyncio loop
whose clock stands still while anything is ready to run and jumps straight to the next timer
when nothing is. Around them, two fakes that spend only that virtual time:

- `ToneVoice` speaks each text at once as the fake Aura server would (`tests.fake_deepgram`:
  a tone whose pitch says which text it is, `synthesize`), in 20 ms chunks;
- `PacedOutput` is an AudioSink that plays in virtual time: `play()` returns once its samples
  have been heard, `len(samples) / RATE` virtual seconds later, so "what is speaking now" and
  "how much of it was heard" follow from the clock exactly. `drop()` silences it at once: only
  the part of the chunk playing whose time had come is kept. `heard()` is everything heard, in
  order, as a capture device would hold it; `sounds` says when each piece began.

A test paces the audio by waiting on the clock: `await harness.wait(1.005)` after an
announcement's `started` event means that exactly 1.005 s of it has been heard (48,240
samples), in no real time. `until()` waits for an event with a generous bound, also in virtual
time: a test that waits for something that never comes fails at once, naming what it saw.

Nothing here may wait on a thread (asyncio.to_thread): the clock would jump while the thread
works. The built-in chimes are therefore computed in the loop (`load_chime`), not read in a
worker as the daemon does; the harness builds no phrase cache, loudness meter or device.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import selectors
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import time as clock_time
from typing import Any

import numpy as np

from herald.announcement import PRIORITY_LEVELS, Announcement, Defaults
from herald.audio.chimes import load_chime
from herald.audio.dsp import Samples
from herald.config import PrioritiesConfig
from herald.dispatcher import Dispatcher
from herald.events import Event, EventKind
from herald.outbox import Outbox
from herald.scheduler import QuietHours, Scheduler
from herald.speaker import Delivery, Speaker
from tests.fake_deepgram import synthesize

RATE = 48000
CHUNK = RATE // 50  # the voice's audio comes in 20 ms pieces
WAIT_S = 120.0  # virtual seconds: generous, and costs nothing when a test is stuck
MAX_PAYLOAD_BYTES = 16384
PRIORITIES = PrioritiesConfig()  # the shipped chime and time to live of each level


# --- virtual time -------------------------------------------------------------------------------


class _SkippingSelector(selectors.BaseSelector):
    """The loop's selector: I/O that is ready is reported at once; when none is, instead of
    sleeping until the next timer it moves the clock there."""

    def __init__(self, loop: VirtualTimeLoop) -> None:
        self._real = selectors.DefaultSelector()
        self._loop = loop

    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        return self._real.register(fileobj, events, data)

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        return self._real.unregister(fileobj)

    def modify(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        return self._real.modify(fileobj, events, data)

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        ready = self._real.select(0)
        if ready or (timeout is not None and timeout <= 0):
            return ready
        if timeout is None:  # no timer at all: only a thread could wake the loop
            return self._real.select(None)
        self._loop.advance(timeout)
        return []

    def get_map(self) -> Any:
        return self._real.get_map()

    def close(self) -> None:
        self._real.close()


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """An event loop whose `time()` only moves when every task waits for a timer."""

    def __init__(self) -> None:
        self._now = 0.0
        super().__init__(_SkippingSelector(self))

    def time(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        self._now += seconds


def virtual_now() -> float:
    """Virtual seconds since the loop began."""
    return asyncio.get_running_loop().time()


# --- the fakes ------------------------------------------------------------------------------


def tone_of(text: str) -> Samples:
    """What `ToneVoice` says for `text`: the fake Aura server's tone for it, sample for sample."""
    return np.frombuffer(synthesize(text, RATE), dtype="<i2").astype(np.int16)


class ToneVoice:
    """A Voice that speaks at once: each text as its own tone (see `tone_of`)."""

    name = "tone"

    def __init__(self) -> None:
        self.asked: list[str] = []  # every text it was asked to speak, in order

    async def stream(self, text: str) -> AsyncGenerator[Samples, None]:
        self.asked.append(text)
        samples = tone_of(text)
        for start in range(0, len(samples), CHUNK):
            yield samples[start : start + CHUNK]

    async def run(self) -> None:
        return None

    def describe(self) -> str:
        return "tone ready"

    async def check(self) -> str:
        return "tone"

    async def aclose(self) -> None:
        return None


@dataclass
class Sound:
    """A piece of audio as it was heard: from `at` (virtual seconds), and whether a drop cut
    it short."""

    samples: Samples
    at: float
    cut: bool = False


@dataclass
class _Playing:
    samples: Samples
    at: float


class PacedOutput:
    """An AudioSink that plays in virtual time and keeps what was heard (see the module)."""

    def __init__(self) -> None:
        self.sounds: list[Sound] = []
        self.drops: list[float] = []  # when each drop() came, in virtual seconds
        self.placed_at: list[float] = []
        self.opened = 0
        self._playing: _Playing | None = None

    async def open(self) -> None:
        self.opened += 1

    async def play(self, samples: Samples) -> None:
        if not len(samples):
            return
        playing = _Playing(samples.copy(), virtual_now())
        self._playing = playing
        try:
            await asyncio.sleep(len(samples) / RATE)
        finally:  # heard whole, or cut short by a cancellation without a drop first
            if self._playing is playing:
                self._keep_heard()

    @property
    def playing(self) -> Samples | None:
        """The chunk being heard right now, if any."""
        return None if self._playing is None else self._playing.samples

    def place(self, at: float) -> None:
        self.placed_at.append(at)

    async def finish(self) -> None:
        return None  # play() returns only once its samples were heard

    def drop(self) -> None:
        self.drops.append(virtual_now())
        if self._playing is not None:
            self._keep_heard()

    async def close(self) -> None:
        return None

    def _keep_heard(self) -> None:
        """The chunk playing ends now: the part of it whose time has come was heard."""
        assert self._playing is not None
        playing, self._playing = self._playing, None
        count = round((virtual_now() - playing.at) * RATE)
        self.sounds.append(Sound(playing.samples[:count], playing.at, count < len(playing.samples)))

    def heard(self) -> Samples:
        """Every sample heard, in order (a capture device's file)."""
        pieces = [sound.samples for sound in self.sounds]
        return np.concatenate(pieces) if pieces else np.zeros(0, np.int16)


@dataclass(frozen=True)
class Logged:
    """An event, and when it came in virtual seconds."""

    event: Event
    at: float

    @property
    def kind(self) -> EventKind:
        return self.event.kind

    @property
    def id(self) -> str | None:
        return self.event.announcement_id

    def __getitem__(self, key: str) -> object:
        return self.event.details[key]


class EventLog:
    """The event sink of the Dispatcher and the Speaker: keeps every event, and can be awaited."""

    def __init__(self) -> None:
        self.seen: list[Logged] = []
        self._arrived = asyncio.Event()

    def append(self, event: Event) -> None:
        self.seen.append(Logged(event, virtual_now()))
        self._arrived.set()

    def kinds(self) -> list[tuple[str, str | None]]:
        return [(logged.kind, logged.id) for logged in self.seen]

    def of(self, ident: str) -> list[Logged]:
        return [logged for logged in self.seen if logged.id == ident]

    def find(self, kind: str, ident: str) -> Logged:
        """The first such event (it must have come)."""
        found = [logged for logged in self.of(ident) if logged.kind == kind]
        assert found, f"no {kind} event for {ident}: {self.kinds()}"
        return found[0]

    def fates(self) -> dict[str, tuple[str, object]]:
        """Each settled announcement: its final event, and the reason that came with it."""
        return {
            logged.id: (logged.kind, logged.event.details.get("reason"))
            for logged in self.seen
            if logged.id is not None and logged.event.settles
        }

    async def until(self, kind: str, ident: str, within: float = WAIT_S) -> Logged:
        """Wait (virtual seconds, bounded) for that event."""
        try:
            async with asyncio.timeout(within):
                while not any(logged.kind == kind for logged in self.of(ident)):
                    self._arrived.clear()
                    await self._arrived.wait()
        except TimeoutError:
            raise AssertionError(f"no {kind} event for {ident}; events: {self.kinds()}") from None
        return self.find(kind, ident)


# --- the harness --------------------------------------------------------------------------------


async def builtin_chime_for(announcement: Announcement) -> Samples | None:
    """The chime it asks for, or its level's shipped default (as herald.app's chime_resolver),
    built-in chimes only, computed in the loop (no worker thread: see the module)."""
    spec = announcement.chime
    if spec is True:
        spec = PRIORITIES.for_level(announcement.level).chime
    if spec is False:
        return None
    return load_chime(spec, RATE)


class _Unpublished:
    """Where the outbox publishes: nowhere (the events are followed through the EventLog)."""

    def publish(
        self,
        topic: str,
        payload: bytes | str,
        qos: int = 1,
        retain: bool = False,
        on_acknowledged: Callable[[], None] | None = None,
    ) -> None:
        return None


def speaker_and_dispatcher(
    voice: ToneVoice,
    output: PacedOutput,
    events: EventLog,
    scheduler: Scheduler,
    delivery: Delivery,
    wall_clock: Callable[[], float],
) -> tuple[Speaker, Dispatcher]:
    """The one place a Speaker and a Dispatcher are built (keep it so: their constructors are
    the part of this harness that follows the daemon's changes), emitting into an outbox as in
    the daemon (herald.app.assemble), without a journal; the EventLog follows it."""
    outbox = Outbox(_Unpublished(), "herald/test/events", journal=None)
    outbox.follow(events.append)
    speaker = Speaker([voice], output, outbox.emit, delivery, clock=virtual_now)
    defaults = Defaults({level: PRIORITIES.for_level(level).ttl_s for level in PRIORITY_LEVELS})
    dispatcher = Dispatcher(
        speaker,
        scheduler,
        outbox.emit,
        defaults,
        MAX_PAYLOAD_BYTES,
        clock=wall_clock,
        queue_kept=outbox.keeps_queue,
    )
    return speaker, dispatcher


@dataclass
class Harness:
    dispatcher: Dispatcher
    speaker: Speaker
    scheduler: Scheduler
    voice: ToneVoice
    output: PacedOutput
    events: EventLog
    said: dict[str, float] = field(default_factory=dict)  # when each id was offered

    def say(self, **payload: Any) -> Announcement:
        """Offer a payload as the `say` topic would (it must be taken)."""
        taken = self.dispatcher.accept(json.dumps(payload).encode(), "herald/test/say")
        assert taken is not None, self.events.kinds()
        self.said[taken.id] = virtual_now()
        return taken

    async def until(self, kind: str, ident: str, within: float = WAIT_S) -> Logged:
        return await self.events.until(kind, ident, within)

    async def wait(self, seconds: float) -> None:
        """Let `seconds` of virtual time pass (audio plays meanwhile)."""
        await asyncio.sleep(seconds)


@contextlib.asynccontextmanager
async def harness(
    quiet_hours: QuietHours | None = None,
    local_time: clock_time = clock_time(12, 0),
    volume: float = 1.0,
) -> AsyncIterator[Harness]:
    """A running Dispatcher (its queue loop a task) on this virtual-time loop.

    `local_time`: the time of day the Scheduler sees, always (for quiet hours).
    """
    assert isinstance(asyncio.get_running_loop(), VirtualTimeLoop), "run it with run()"
    epoch = time.time() - virtual_now()  # wall-clock time moves with the virtual clock
    voice, output, events = ToneVoice(), PacedOutput(), EventLog()
    scheduler = Scheduler(quiet_hours=quiet_hours, local_time=lambda _: local_time)
    delivery = Delivery(RATE, volume=volume, chime_for=builtin_chime_for)
    speaker, dispatcher = speaker_and_dispatcher(
        voice, output, events, scheduler, delivery, lambda: epoch + virtual_now()
    )
    queue = asyncio.create_task(dispatcher.speak_queue(), name="speak-queue")
    try:
        yield Harness(dispatcher, speaker, scheduler, voice, output, events)
    finally:
        queue.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await queue


def run(scenario: Callable[[Harness], Awaitable[None]], **options: Any) -> None:
    """Run `scenario` against a fresh harness (`options`: see `harness`) on virtual time."""

    async def main() -> None:
        async with harness(**options) as running:
            await scenario(running)

    with asyncio.Runner(loop_factory=VirtualTimeLoop) as runner:
        runner.run(main())
