"""The self-hosted multi-provider TTS gateway: its protocol (pure) and the voice over a warm socket.

Protocol facts, each with its source in the gateway's code (xRx `tts/app/main.py` and its
provider modules): docs/protocols.md, "The self-hosted gateway". In short:
`ws://HOST:8002/api/v1/ws`, no authentication; the client sends `{"action": "synthesize",
"text": ...}` and `{"action": "cancel"}`; the server answers with binary 16-bit mono PCM, then
`{"action": "done"}`.
The client cannot ask for a rate: `voice.gateway.sample_rate` is the rate the gateway really
sends (its TTS_SAMPLE_RATE, but 16000 whenever its provider is OpenAI); `check` measures a test
phrase and says when the audio looks like another rate.

What the gateway does not say, Herald judges for itself:

- A provider failure seldom closes the socket. The gateway sends `done` after no audio or part of
  it, or its synthesis task dies with no `done` at all. An utterance whose audio is far shorter
  than its text needs (`looks_truncated`) raises VoiceError, so the next voice speaks the whole
  text and the Speaker keeps none of it in the phrase cache; so does a synthesis that goes silent
  (`first_audio_timeout_s`, `stall_timeout_s`). The gateway's own cache can hold a cut-off copy
  of a phrase, replayed as if whole: it is caught the same way.
- One provider instance serves every connection, and each disconnect calls its `close()`: a
  reconnect can break the next synthesis (OpenAI) or cut another connection's audio (ElevenLabs,
  Cartesia). So Herald keeps its socket: no age rotation by default, and a stop sends `cancel`
  and discards audio until `done`, or until the socket has been quiet for `cancel_wait_s`
  (OpenAI never sends a `done` after a cancel), instead of replacing the socket. Only a close, a
  synthesis gone silent (after which the OpenAI provider works again only once a socket opens)
  or a gateway that ignores `cancel` gets a fresh socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from typing import Any, NoReturn

import numpy as np
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from herald.audio.dsp import Samples
from herald.config import GatewayConfig
from herald.text import SPOKEN_CHARS_PER_SECOND
from herald.voice.base import VoiceError
from herald.voice.cache import concatenate
from herald.voice.protocol import Failure, FailureKind
from herald.voice.socket import LiveSocket, SocketKeeper, SocketSpec
from herald.voice.streaming import END, FrameMeaning, SocketVoice, Utterance, cold_check

log = logging.getLogger(__name__)


# --- client messages ------------------------------------------------------------------------


def synthesize(text: str) -> str:
    return json.dumps({"action": "synthesize", "text": text}, ensure_ascii=False)


CANCEL = json.dumps({"action": "cancel"})


# --- server messages ------------------------------------------------------------------------


@dataclass(frozen=True)
class Audio:
    data: bytes  # may be empty: the OpenAI provider sends b"" at the end of each synthesis


@dataclass(frozen=True)
class Done:
    pass


@dataclass(frozen=True)
class Other:
    text: str


ServerEvent = Audio | Done | Other


def decode(frame: str | bytes) -> ServerEvent:
    """One frame from the gateway as a typed event; never raises."""
    if isinstance(frame, bytes):
        return Audio(frame)
    try:
        message: dict[str, Any] = json.loads(frame)
        action = message.get("action")
    except (ValueError, AttributeError):
        return Other(frame[:200])
    return Done() if action == "done" else Other(frame[:200])


# --- failures -------------------------------------------------------------------------------


def classify_close(code: int | None, reason: str) -> Failure:
    """Every close is transient: a server restart, the network, or Herald replacing a socket."""
    said = f"{code} {reason}".strip() if code is not None else "no close frame"
    return Failure(FailureKind.TRANSIENT, f"the socket to the gateway closed ({said})")


def classify_handshake(status: int, detail: str | None) -> Failure:
    said = f"HTTP {status}" + (f" {detail}" if detail else "")
    if status in (400, 403, 404):
        return Failure(FailureKind.CONFIG, f"{said}: check voice.gateway.url (…/api/v1/ws)")
    return Failure(FailureKind.TRANSIENT, f"{said}: gateway unavailable")


# --- judging the audio ------------------------------------------------------------------------

# Letters and digits a second that no voice reaches. Ordinary speech says 11-12 of them a second
# (text.SPOKEN_CHARS_PER_SECOND, 14, counts spaces and punctuation too), a voice at double speed
# about 23. Audio shorter than the text's letters and digits at this rate was cut short. The bound
# is loose on purpose: a fast voice must never be judged truncated, so only a gross cut (no audio,
# or a small start of it) is caught; a cut near the end goes unnoticed.
FASTEST_LETTERS_PER_SECOND = 30.0


def shortest_plausible_s(text: str) -> float:
    """The least audio any voice could speak `text` in, in seconds."""
    return sum(char.isalnum() for char in text) / FASTEST_LETTERS_PER_SECOND


def looks_truncated(audio_s: float, text: str) -> bool:
    return audio_s < shortest_plausible_s(text)


# `check` speaks this and compares its length with what speech takes: long enough that one
# voice's pace hardly matters, English so that SPOKEN_CHARS_PER_SECOND applies.
CHECK_PHRASE = (
    "Herald check. This sentence is long enough to tell whether the gateway's audio plays at "
    "the right speed."
)
# The rates a length can tell apart (22050 and 44100 are too close to 24000 and 48000).
COMMON_RATES = (8000, 16000, 24000, 32000, 48000)
# Voices differ in pace by about a fifth either way; audio read at the wrong rate is off by 1.5
# (16000 read as 24000) or more. The bounds are halfway between, on a log scale.
PACE_RANGE = (0.82, 1.22)


def speech_seconds(samples: Samples, rate: int) -> float:
    """How long the speech in `samples` lasts, without the quiet before and after it."""
    if not len(samples):
        return 0.0
    level = np.abs(samples.astype(np.int32))
    loud = np.flatnonzero(level > max(1, int(level.max()) // 30))
    return 0.0 if not len(loud) else (int(loud[-1]) - int(loud[0]) + 1) / rate


def rate_looks_like(speech_s: float, text: str, configured: int) -> int | None:
    """The rate the audio seems to have when it is clearly not `configured`, else None.

    `speech_s` is how long `text` lasted when read at `configured`. Audio at 16000 Hz read as
    24000 lasts 2/3 as long as speech takes; the rate it looks like is the common rate nearest
    to `configured` times that ratio.
    """
    if speech_s <= 0 or not text:
        return None
    ratio = speech_s / (len(text) / SPOKEN_CHARS_PER_SECOND)
    if PACE_RANGE[0] <= ratio <= PACE_RANGE[1]:
        return None
    implied = configured * ratio
    looks = min(COMMON_RATES, key=lambda rate: abs(math.log(rate / implied)))
    return None if looks == configured else looks


# --- the voice --------------------------------------------------------------------------------

NEVER_S = 10 * 365 * 86400.0  # max_age_s = 0: no rotation (asyncio wants a finite timeout)
# After `cancel`, audio that keeps coming this long means the gateway ignores it: new socket.
CANCEL_LIMIT_S = 5.0
CLOSE_WAIT_S = 2.0  # for the gateway to answer Herald's close frame


class GatewayVoice(SocketVoice):
    """The gateway over one warm socket: one `synthesize` per announcement, audio until `done`."""

    name = "gateway"

    def __init__(
        self, cfg: GatewayConfig, output_rate: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._cfg = cfg
        self._clock = clock
        self.connect_wait_s = cfg.connect_wait_s
        self.first_audio_timeout_s = cfg.first_audio_timeout_s
        self.stall_timeout_s = cfg.stall_timeout_s
        self._input_rate = cfg.sample_rate
        self._output_rate = output_rate
        self.keeper: SocketKeeper = SocketKeeper(
            SocketSpec(
                name=self.name,
                url=cfg.url,
                headers={},
                max_age_s=cfg.max_age_s or NEVER_S,
                classify_close=classify_close,
                classify_handshake=classify_handshake,
            ),
            clock,
        )

    async def _send_text(self, said: Utterance) -> None:
        await _discard_stale(said.live.connection)
        await said.live.connection.send(synthesize(said.text))

    def _read(self, frame: str | bytes, said: Utterance) -> FrameMeaning:
        """Audio; the end at `done`, unless the audio was far too short for the text."""
        event = decode(frame)
        if isinstance(event, Audio):
            return event.data or None  # b"" is OpenAI's end-of-stream mark: not a sign of life
        if isinstance(event, Done):
            heard_s = said.audio_bytes / 2 / self._input_rate
            if looks_truncated(heard_s, said.text):
                raise VoiceError(
                    f"gateway: 'done' after {heard_s:.1f} s of audio, far too short for "
                    f"{len(said.text)} characters (its provider failed, or its cache holds a "
                    "cut-off copy of this text)"
                )
            return END
        log.debug("gateway: %s", event)
        return None

    async def _went_silent(self, said: Utterance, silent_s: float) -> NoReturn:
        """The provider's synthesis died: the socket is replaced (see `_replace`), and the
        next voice speaks the text, not a replay here."""
        await self._replace(said.live, "its synthesis went silent")
        after = "after part of the audio" if said.audio_bytes else "before any audio"
        raise VoiceError(
            f"gateway: no audio and no 'done' for {silent_s:g} s {after}: "
            "its provider's synthesis died"
        ) from None

    async def _replace(self, live: LiveSocket, why: str) -> None:
        """Close the socket; the keeper opens the next one after its backoff. The gateway
        calls its shared provider's close() when a socket closes and initialize() when one
        opens: in this order OpenAI's provider ends up with a client, in the other (what a
        replacement opened first would risk) without one, and every synthesis dies silently."""
        log.info("gateway: closing socket #%d: %s", live.number, why)
        with contextlib.suppress(ConnectionClosed, OSError, TimeoutError):
            async with asyncio.timeout(CLOSE_WAIT_S):
                await live.connection.close(1000, f"herald: {why}"[:120])

    async def _interrupt(self, live: LiveSocket) -> None:
        """`cancel`, then discard the stale audio until `done` or until the socket is quiet: the
        socket is kept. The gateway itself does not answer `cancel`; a provider that swallows
        the cancellation sends `done` (ElevenLabs, Deepgram, Cartesia), OpenAI sends nothing."""
        try:
            await live.connection.send(CANCEL)
            ended = await self._settle(live.connection)
        except (ConnectionClosed, OSError):
            return  # the keeper sees the close and reconnects
        if ended is None:
            await self._replace(live, "audio still came long after 'cancel'")
        else:
            log.debug("gateway: cancelled (%s)", ended)

    async def _settle(self, connection: ClientConnection) -> str | None:
        """Discard frames until `done` ("done"), or until none came for `cancel_wait_s`
        ("quiet"); None when audio still came after CANCEL_LIMIT_S."""
        loop = asyncio.get_running_loop()
        give_up = loop.time() + CANCEL_LIMIT_S
        while True:
            if loop.time() >= give_up:
                return None
            try:
                async with asyncio.timeout(self._cfg.cancel_wait_s):
                    event = decode(await connection.recv())
            except TimeoutError:
                return "quiet"
            if isinstance(event, Done):
                return "done"

    async def check(self) -> str:
        """Speak CHECK_PHRASE on a cold socket; fail when its length says the audio is at
        another rate than `sample_rate` (it would play too fast or too slow)."""
        heard: list[Samples] = []

        async def speak(_: str) -> AsyncGenerator[Samples, None]:
            async for chunk in self.stream(CHECK_PHRASE):
                heard.append(chunk)
                yield chunk

        said = await cold_check(self.keeper, speak, self._output_rate, self._clock)
        configured = self._cfg.sample_rate
        speech_s = speech_seconds(concatenate(heard), self._output_rate)
        looks = rate_looks_like(speech_s, CHECK_PHRASE, configured)
        if looks is not None:
            expected_s = len(CHECK_PHRASE) / SPOKEN_CHARS_PER_SECOND
            raise VoiceError(
                f"the test phrase lasted {speech_s:.1f} s at {configured} Hz where speech takes "
                f"about {expected_s:.0f} s: the gateway seems to send {looks} Hz (with OpenAI it "
                f"always sends 16000); set voice.gateway.sample_rate = {looks}"
            )
        return f"{self._cfg.url} at {configured} Hz, {said}"


async def _discard_stale(connection: ClientConnection) -> None:
    """Drop what is already buffered before a new `synthesize`: a `done` (or audio) that came
    after an earlier `cancel` had settled would otherwise be taken for this text's."""
    while True:
        try:
            async with asyncio.timeout(0):  # only what has arrived: recv returns without waiting
                frame = await connection.recv()
        except TimeoutError:
            return
        log.debug("gateway: discarded a stale %s", decode(frame))
