"""The self-hosted multi-provider TTS gateway: its protocol (pure) and the voice over a warm socket.

Protocol facts (docs/tts-protocols.md section 3 in the team's shared notes): `ws://HOST:8002/api/v1/ws`,
no authentication. The client sends `{"action": "synthesize", "text": ...}` and
`{"action": "cancel"}`; the server answers with binary 16-bit mono PCM at its own
`TTS_SAMPLE_RATE` (24000 unless it was changed: the client cannot ask for a rate, so
`voice.gateway.sample_rate` must match it), then `{"action": "done"}`. When its TTS provider
fails, the server closes the socket: a transient failure, after which Herald reconnects and the
announcement is replayed once or spoken by the next voice.

The gateway does not acknowledge `cancel`, so after an interruption Herald cannot tell the last
stale audio from the next announcement's: it replaces the socket instead (a local handshake
takes milliseconds, and the next announcement's chime hides it).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from typing import Any

from websockets.exceptions import ConnectionClosed

from herald.audio.dsp import Samples
from herald.config import GatewayConfig
from herald.voice.protocol import Failure, FailureKind
from herald.voice.socket import LiveSocket, SocketKeeper, SocketSpec
from herald.voice.streaming import Pcm16Stream, SocketFailed, SocketVoice, cold_check

log = logging.getLogger(__name__)


# --- client messages ------------------------------------------------------------------------


def synthesize(text: str) -> str:
    return json.dumps({"action": "synthesize", "text": text}, ensure_ascii=False)


CANCEL = json.dumps({"action": "cancel"})


# --- server messages ------------------------------------------------------------------------


@dataclass(frozen=True)
class Audio:
    data: bytes


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
    """Every close is transient: the gateway closes the socket when its provider fails."""
    said = f"{code} {reason}".strip() if code is not None else "no close frame"
    return Failure(FailureKind.TRANSIENT, f"the gateway closed the socket ({said})")


def classify_handshake(status: int, detail: str | None) -> Failure:
    said = f"HTTP {status}" + (f" {detail}" if detail else "")
    if status in (400, 403, 404):
        return Failure(FailureKind.CONFIG, f"{said}: check voice.gateway.url (…/api/v1/ws)")
    return Failure(FailureKind.TRANSIENT, f"{said}: gateway unavailable")


# --- the voice --------------------------------------------------------------------------------

STALL_TIMEOUT_S = 5.0  # no audio for this long in the middle of an utterance: the socket is dead


class GatewayVoice(SocketVoice):
    """The gateway over one warm socket: one `synthesize` per announcement, audio until `done`."""

    name = "gateway"

    def __init__(
        self, cfg: GatewayConfig, output_rate: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._cfg = cfg
        self._clock = clock
        self.connect_wait_s = cfg.connect_wait_s
        self._output_rate = output_rate
        self.keeper: SocketKeeper = SocketKeeper(
            SocketSpec(
                name=self.name,
                url=cfg.url,
                headers={},
                max_age_s=cfg.max_age_s,
                classify_close=classify_close,
                classify_handshake=classify_handshake,
            ),
            clock,
        )

    async def _utterance(self, live: LiveSocket, text: str) -> AsyncGenerator[Samples, None]:
        connection = live.connection
        pcm = Pcm16Stream(self._cfg.sample_rate, self._output_rate)
        timeout = self._cfg.first_audio_timeout_s
        try:
            await connection.send(synthesize(text))
            while True:
                event = decode(await asyncio.wait_for(connection.recv(), timeout))
                if isinstance(event, Audio):
                    timeout = STALL_TIMEOUT_S
                    if len(out := pcm.push(event.data)):
                        yield out
                elif isinstance(event, Done):
                    if len(tail := pcm.end()):
                        yield tail
                    return
                else:
                    log.debug("gateway: %s", event)
        except ConnectionClosed as exc:
            received = exc.rcvd
            code, reason = (received.code, received.reason) if received else (None, "")
            raise SocketFailed(classify_close(code, reason)) from None
        except TimeoutError:
            failure = Failure(FailureKind.TRANSIENT, "no audio from the gateway in time")
            raise SocketFailed(failure) from None

    async def _interrupt(self, live: LiveSocket) -> None:
        """`cancel`, then a fresh socket: nothing says when the last stale audio has come."""
        with contextlib.suppress(ConnectionClosed, OSError):
            await live.connection.send(CANCEL)
        self.keeper.retire(live, "the gateway does not acknowledge 'cancel'")

    async def check(self) -> str:
        said = await cold_check(self.keeper, self.stream, self._output_rate, self._clock)
        return f"{self._cfg.url} at {self._cfg.sample_rate} Hz, {said}"

    async def aclose(self) -> None:
        """The keeper's task closes the socket when it is cancelled."""
