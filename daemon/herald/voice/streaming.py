"""What every socket voice does the same way: the SocketVoice base and its utterance loop; one
utterance over a leased socket, replayed once on a fresh socket when the first dies; the cold
check for `herald check`; PCM frames as samples.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass
from typing import NoReturn, TypeAlias, TypeVar

from websockets.exceptions import ConnectionClosed

from herald.audio.dsp import Samples, StreamResampler, pcm16
from herald.voice.base import VoiceError
from herald.voice.protocol import Failure, FailureKind
from herald.voice.socket import LiveSocket, SocketKeeper, close_frame

log = logging.getLogger(__name__)

T = TypeVar("T")


class SocketFailed(Exception):
    """The socket cannot finish this utterance. `replay`: a fresh socket may; else give up."""

    def __init__(self, failure: Failure, replay: bool = True) -> None:
        super().__init__(str(failure))
        self.failure = failure
        self.replay = replay


class Ended(enum.Enum):
    """The engine's end marker for this text: all of its audio has come."""

    END = "end"


END = Ended.END
# What one frame means to the utterance loop: audio (bytes, maybe empty), the end of the text,
# or nothing (a message the engine has dealt with, or a frame that is not this text's).
FrameMeaning: TypeAlias = bytes | Ended | None


@dataclass
class Utterance:
    """One text on one socket, as far as it has come: what the engine's hooks may look at."""

    live: LiveSocket
    text: str
    heard: bool = False  # a sign of life came: the stall timeout applies from now on
    audio_bytes: int = 0  # audio received so far
    retire_after: str | None = None  # the socket is suspect: replace it once the text is spoken


class SocketVoice(ABC):
    """What a voice over one warm socket does alike: the socket is kept warm in the background,
    described for the status line, and each text is one utterance on it, replayed once on a
    fresh socket. The utterance loop is the same for every engine: send the text, then read
    frames until the engine's end marker, within a first-audio timeout that becomes a stall
    timeout once audio was heard. A voice says how the text is sent (`_send_text`), what a
    frame means (`_read`) and how an utterance is cut short (`_interrupt`); `keeper` is None
    when the voice has no API key (`no_key` says so)."""

    name: str
    keeper: SocketKeeper | None
    connect_wait_s: float  # how long an utterance waits for a socket that is not open yet
    first_audio_timeout_s: float  # how long the server may take to start a text's audio
    stall_timeout_s: float  # no frame for this long once audio came: the synthesis is dead
    _input_rate: int  # the rate of the PCM the server sends
    _output_rate: int
    no_key = ""

    def describe(self) -> str:
        return f"{self.name}: no API key" if self.keeper is None else self.keeper.describe()

    async def run(self) -> None:
        """Keep the socket warm until cancelled."""
        if self.keeper is None:
            log.error("%s", self.no_key)
            return
        await self.keeper.run()

    async def stream(self, text: str) -> AsyncGenerator[Samples, None]:
        if self.keeper is None:
            raise VoiceError(self.no_key)
        if not text.strip():
            return
        utterance = replaying(
            self.keeper,
            self.connect_wait_s,
            lambda live: self._utterance(live, text),
            self._interrupt,
        )
        async with contextlib.aclosing(utterance) as audio:
            async for samples in audio:
                yield samples

    async def _utterance(self, live: LiveSocket, text: str) -> AsyncGenerator[Samples, None]:
        """The whole text on this socket, as samples at the output rate; SocketFailed when the
        socket cannot finish it."""
        said = Utterance(live, text)
        pcm = Pcm16Stream(self._input_rate, self._output_rate)
        try:
            await self._send_text(said)
            while (meaning := await self._next_frame(said)) is not END:
                if meaning is not None and len(out := pcm.push(meaning)):
                    yield out
            if len(tail := pcm.end()):
                yield tail
        except ConnectionClosed as exc:
            raise SocketFailed(self._close_failure(exc)) from None
        if said.retire_after and self.keeper is not None:
            self.keeper.retire(live, said.retire_after)

    async def _next_frame(self, said: Utterance) -> FrameMeaning:
        """What the next frame means; audio is counted, and may show a sign of life."""
        silent_s = self.stall_timeout_s if said.heard else self.first_audio_timeout_s
        try:
            async with asyncio.timeout(silent_s):
                frame = await said.live.connection.recv()
        except TimeoutError:
            await self._went_silent(said, silent_s)
        meaning = self._read(frame, said)
        if isinstance(meaning, bytes):
            said.audio_bytes += len(meaning)
            said.heard = said.heard or self._sign_of_life(meaning)
        return meaning

    def _close_failure(self, exc: ConnectionClosed) -> Failure:
        assert self.keeper is not None  # the socket was leased from it
        return self.keeper.spec.classify_close(*close_frame(exc))

    @abstractmethod
    async def _send_text(self, said: Utterance) -> None:
        """Send the whole text, and whatever asks the server to speak it now."""

    @abstractmethod
    def _read(self, frame: str | bytes, said: Utterance) -> FrameMeaning:
        """What one frame from the server means for this text; raises SocketFailed (or
        VoiceError) when it says the text cannot be finished."""

    def _sign_of_life(self, audio: bytes) -> bool:
        """Whether this audio shows the synthesis is under way: any that is not empty."""
        return bool(audio)

    async def _went_silent(self, said: Utterance, silent_s: float) -> NoReturn:
        """No frame came for `silent_s`: the socket is dead, and a fresh one may speak the text."""
        failure = Failure(FailureKind.TRANSIENT, "no audio from the server in time")
        raise SocketFailed(failure) from None

    @abstractmethod
    async def _interrupt(self, live: LiveSocket) -> None:
        """Cut the utterance short, leaving no stale audio on the socket (or retire it)."""

    async def aclose(self) -> None:
        """Nothing to do: the keeper's task closes the socket when it is cancelled."""
        return None


async def replaying(
    keeper: SocketKeeper,
    wait_s: float,
    utterance: Callable[[LiveSocket], AsyncGenerator[T, None]],
    interrupt: Callable[[LiveSocket], Awaitable[None]],
    attempts: int = 2,
) -> AsyncGenerator[T, None]:
    """One utterance over a leased socket, replayed from its start once on a fresh socket when
    the first fails; the listener may hear a beginning twice but never loses the end.

    Closing this generator early (a preemption, a stop) runs `interrupt` on the socket, which
    must leave no stale audio behind for the next utterance (or retire the socket).
    Raises VoiceError when no socket can speak it.
    """
    name = keeper.spec.name
    for attempt in range(1, attempts + 1):
        async with keeper.lease(wait_s) as live:
            try:
                async with contextlib.aclosing(utterance(live)) as items:
                    async for item in items:
                        live.spoke = True  # a failure later on is a fresh one: no long backoff
                        yield item
                return
            except SocketFailed as exc:
                keeper.retire(live, str(exc))
                if attempt == attempts or not exc.replay:
                    raise VoiceError(f"{name}: {exc}") from None
                log.warning(
                    "%s: socket #%d failed mid-announcement (%s); replaying it on a fresh socket",
                    name,
                    live.number,
                    exc,
                )
            except (GeneratorExit, asyncio.CancelledError):
                await interrupt(live)
                raise


async def cold_check(
    keeper: SocketKeeper,
    speak: Callable[[str], AsyncGenerator[Samples, None]],
    output_rate: int,
    clock: Callable[[], float] = time.monotonic,
) -> str:
    """Open a socket and speak a few words; say how long the first audio took (for `check`)."""
    keeping = asyncio.create_task(keeper.run(), name=f"check-{keeper.spec.name}")
    try:
        started = clock()
        frames, first = 0, 0.0
        async for chunk in speak("Herald check."):
            first = first or clock() - started
            frames += len(chunk)
        return (
            f"first audio after {first * 1000:.0f} ms (cold), "
            f"{frames / output_rate:.1f} s of test speech"
        )
    finally:
        keeping.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await keeping


class Pcm16Stream:
    """Binary frames of 16-bit little-endian mono PCM, in any split, as samples at the output
    rate: an odd byte waits for the next frame, and the resampler is flushed at the end."""

    def __init__(self, in_rate: int, out_rate: int) -> None:
        self._resampler = StreamResampler(in_rate, out_rate)
        self._carry = b""

    def push(self, data: bytes) -> Samples:
        data = self._carry + data
        usable = len(data) - len(data) % 2
        self._carry = data[usable:]
        return self._resampler.push(pcm16(data[:usable]))

    def end(self) -> Samples:
        return self._resampler.flush()
