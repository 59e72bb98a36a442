"""SLNG's TTS gateway: the protocol (pure) and the voice that speaks over a warm socket.

Protocol facts (docs/tts-protocols.md section 2 in the team's shared notes):
`wss://api.slng.ai/v1/tts/{provider}/{model}:{variant}` with `Authorization: Bearer <key>`. The
client sends `init` first and waits for `ready`; then `text`, `flush`, `clear` (answered by
`cleared`), `cancel`, `keepalive`, `close`. Audio comes as binary frames (Deepgram routes) or as
base64 `audio_chunk` messages (the others); `flushed` and `audio_end` end an utterance; `error`
carries a code. Some upstreams close the socket normally (1000) after each utterance.
Servers disagree on whether `cancel` and `keepalive` exist: an `error` answering one of them
means "not supported", and Herald stops sending it.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from typing import Any

from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from herald.audio.dsp import Samples
from herald.config import SlngConfig
from herald.voice.base import VoiceError
from herald.voice.protocol import Failure, FailureKind, split_text
from herald.voice.socket import LiveSocket, SessionRefused, SocketKeeper, SocketSpec
from herald.voice.streaming import Pcm16Stream, SocketFailed, SocketVoice, cold_check

log = logging.getLogger(__name__)

MAX_TEXT_CHARS = 2000  # per `text` message; longer text goes in several, with one `flush`


# --- client messages ------------------------------------------------------------------------


def _message(kind: str, **fields: object) -> str:
    return json.dumps({"type": kind, **fields}, ensure_ascii=False)


def init(cfg: SlngConfig) -> str:
    """The session's model, voice and audio format: the first message on every socket."""
    config: dict[str, object] = {"encoding": "linear16", "sample_rate": cfg.sample_rate}
    if cfg.language:
        config["language"] = cfg.language
    if cfg.speed is not None:
        config["speed"] = cfg.speed
    return _message("init", model=cfg.model_id, voice=cfg.voice, config=config)


def text(words: str) -> str:
    return _message("text", text=words)


FLUSH = _message("flush")
CLEAR = _message("clear")
CANCEL = _message("cancel")
KEEPALIVE = _message("keepalive")
CLOSE = _message("close")


# --- server messages ------------------------------------------------------------------------


@dataclass(frozen=True)
class Audio:
    data: bytes


@dataclass(frozen=True)
class Ready:
    session_id: str


@dataclass(frozen=True)
class End:
    """`flushed` or `audio_end`: the audio of everything flushed has been sent."""

    kind: str


@dataclass(frozen=True)
class Cleared:
    pass


@dataclass(frozen=True)
class Error:
    code: str
    message: str

    def mentions(self, word: str) -> bool:
        return word in f"{self.code} {self.message}".lower()


@dataclass(frozen=True)
class Other:
    """segment_start, segment_end, and anything this client does not know."""

    text: str


ServerEvent = Audio | Ready | End | Cleared | Error | Other


def decode(frame: str | bytes) -> ServerEvent:
    """One frame from the server as a typed event; never raises."""
    if isinstance(frame, bytes):
        return Audio(frame)
    try:
        message: dict[str, Any] = json.loads(frame)
        kind = message.get("type")
    except (ValueError, AttributeError):
        return Other(frame[:200])
    if kind == "audio_chunk":
        try:
            return Audio(base64.b64decode(str(message.get("data", "")), validate=True))
        except (binascii.Error, ValueError):
            return Error("bad_audio_chunk", "audio_chunk data is not base64")
    if kind in ("flushed", "audio_end"):
        return End(kind)
    if kind == "cleared":
        return Cleared()
    if kind == "ready":
        return Ready(str(message.get("session_id", "")))
    if kind == "error":
        return Error(str(message.get("code", "")), str(message.get("message", "")))
    return Other(frame[:200])


# --- failures -------------------------------------------------------------------------------


def classify_error(code: str, message: str) -> Failure:
    """What an `error` message means for Herald (codes: auth_error, config_error, rate_limit,
    provider_error; others are sorted by the words in them)."""
    said = f"{code}: {message}" if message else code
    words = f"{code} {message}".lower()
    if any(word in words for word in ("auth", "api key", "forbidden", "permission")):
        return Failure(FailureKind.AUTH, f"{said} (check the SLNG key)")
    if any(word in words for word in ("config", "invalid", "unsupported", "unknown model")):
        return Failure(FailureKind.CONFIG, f"{said} (check [voice.slng])")
    if any(word in words for word in ("rate", "quota", "too many", "concurren")):
        return Failure(FailureKind.RATE_LIMITED, said)
    return Failure(FailureKind.TRANSIENT, said)


def classify_close(code: int | None, reason: str) -> Failure:
    """What a close frame from SLNG means for Herald."""
    said = f"{code} {reason}".strip() if code is not None else "no close frame"
    if code in (4001, 4003) or "auth" in reason.lower():
        return Failure(FailureKind.AUTH, f"closed: {said} (check the SLNG key)")
    if code in (1013, 4029):
        return Failure(FailureKind.RATE_LIMITED, f"closed: {said}")
    if code == 1000:
        return Failure(FailureKind.TRANSIENT, f"closed by the server ({said})")
    return Failure(FailureKind.TRANSIENT, f"connection lost ({said})")


def classify_handshake(status: int, detail: str | None) -> Failure:
    """What an HTTP status refusing the WebSocket upgrade means."""
    said = f"HTTP {status}" + (f" {detail}" if detail else "")
    if status in (400, 404):
        return Failure(FailureKind.CONFIG, f"{said}: check voice.slng provider, model and variant")
    if status in (401, 402, 403):
        return Failure(FailureKind.AUTH, f"{said}: the SLNG key was refused")
    if status == 429:
        return Failure(FailureKind.RATE_LIMITED, f"{said}: too many requests")
    return Failure(FailureKind.TRANSIENT, f"{said}: server unavailable")


# --- the voice --------------------------------------------------------------------------------

STALL_TIMEOUT_S = 5.0  # no audio for this long in the middle of an utterance: the socket is dead
PROBE_WAIT_S = 0.5  # how long the first keepalive waits for an error saying it is unsupported
NO_KEY = (
    "slng has no API key: sudo ./install.sh --slng-key-file FILE, or set "
    "voice.slng.api_key_file or $SLNG_API_KEY"
)


class SlngVoice(SocketVoice):
    """SLNG over one warm socket: init/ready once per socket, then text and one flush per
    announcement; audio is resampled from `sample_rate` to the output rate."""

    name = "slng"
    no_key = NO_KEY

    def __init__(
        self,
        cfg: SlngConfig,
        api_key: str | None,
        output_rate: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._cfg = cfg
        self._clock = clock
        self.connect_wait_s = cfg.connect_wait_s
        self._output_rate = output_rate
        # None: not known yet; an error answering one of them makes it False for good.
        self.cancel_supported: bool | None = None
        self.keepalive_supported: bool | None = None
        self.keeper = None if not api_key else SocketKeeper(self._spec(api_key), clock)

    def _spec(self, api_key: str) -> SocketSpec:
        headers = {"Authorization": f"Bearer {api_key}"}
        if self._cfg.region:
            headers["X-Region-Override"] = self._cfg.region
        return SocketSpec(
            name=self.name,
            url=self._cfg.socket_url,
            headers=headers,
            max_age_s=self._cfg.max_age_s,
            classify_close=classify_close,
            classify_handshake=classify_handshake,
            goodbye=CLOSE,
            after_open=self._start_session,
            idle_upkeep=self._keep_alive if self._cfg.keepalive_s > 0 else None,
            idle_upkeep_s=self._cfg.keepalive_s or 20.0,
            reconnect_after_normal_close=True,
        )

    # --- on the socket ----------------------------------------------------------------------

    async def _start_session(self, connection: ClientConnection) -> None:
        """`init`, then wait (bounded) for `ready`; an `error` instead refuses the session."""
        await connection.send(init(self._cfg))
        try:
            async with asyncio.timeout(self._cfg.ready_timeout_s):
                while True:
                    event = decode(await connection.recv())
                    if isinstance(event, Ready):
                        log.debug("slng: session %s ready", event.session_id)
                        return
                    if isinstance(event, Error):
                        raise SessionRefused(classify_error(event.code, event.message))
        except TimeoutError:
            wait = self._cfg.ready_timeout_s
            failure = Failure(FailureKind.TRANSIENT, f"no 'ready' within {wait:g} s of 'init'")
            raise SessionRefused(failure) from None

    async def _utterance(self, live: LiveSocket, words: str) -> AsyncGenerator[Samples, None]:
        connection = live.connection
        pcm = Pcm16Stream(self._cfg.sample_rate, self._output_rate)
        heard = False
        try:
            for piece in split_text(words, MAX_TEXT_CHARS):
                await connection.send(text(piece))
            await connection.send(FLUSH)
            while True:
                timeout = STALL_TIMEOUT_S if heard else self._cfg.first_audio_timeout_s
                event = decode(await asyncio.wait_for(connection.recv(), timeout))
                if isinstance(event, Audio):
                    heard = True
                    if len(out := pcm.push(event.data)):
                        yield out
                elif isinstance(event, End) and heard:
                    # Before any audio, an end marker is the second one of the utterance
                    # before (servers may send both `flushed` and `audio_end`): not ours.
                    if len(tail := pcm.end()):
                        yield tail
                    return
                elif isinstance(event, Error):
                    self._utterance_error(event)
        except ConnectionClosed as exc:
            received = exc.rcvd
            code, reason = (received.code, received.reason) if received else (None, "")
            raise SocketFailed(classify_close(code, reason)) from None
        except TimeoutError:
            failure = Failure(FailureKind.TRANSIENT, "no audio from the server in time")
            raise SocketFailed(failure) from None

    def _utterance_error(self, event: Error) -> None:
        """An error during an utterance fails it, unless it answers a late keepalive."""
        if event.mentions("keepalive"):
            self._unsupported("keepalive")
            return
        failure = classify_error(event.code, event.message)
        raise SocketFailed(failure, replay=failure.kind is FailureKind.TRANSIENT)

    async def _interrupt(self, live: LiveSocket) -> None:
        """`cancel` (where supported) and `clear`; swallow the stale audio until `cleared`."""
        assert self.keeper is not None
        connection = live.connection
        try:
            sent_cancel = self.cancel_supported is not False
            if sent_cancel:
                await connection.send(CANCEL)
            await connection.send(CLEAR)
            async with asyncio.timeout(self._cfg.clear_timeout_s):
                while not isinstance(event := decode(await connection.recv()), Cleared):
                    # The server answers in order: an error before `cleared` answers `cancel`.
                    if isinstance(event, Error) and sent_cancel:
                        self._unsupported("cancel")
            if sent_cancel and self.cancel_supported is None:
                self.cancel_supported = True
        except (TimeoutError, ConnectionClosed):
            self.keeper.retire(live, "no 'cleared' after 'clear'")

    async def _keep_alive(self, connection: ClientConnection) -> None:
        """The idle upkeep: `keepalive`; the first one waits briefly for an error saying no."""
        if self.keepalive_supported is False:
            return
        await connection.send(KEEPALIVE)
        if self.keepalive_supported:
            return
        try:
            async with asyncio.timeout(PROBE_WAIT_S):
                while not isinstance(decode(await connection.recv()), Error):
                    pass  # nothing else is due while idle
            self._unsupported("keepalive")
        except TimeoutError:
            self.keepalive_supported = True

    def _unsupported(self, message: str) -> None:
        if message == "cancel" and self.cancel_supported is not False:
            self.cancel_supported = False
            log.info("slng: the server does not support 'cancel'; using 'clear' alone")
        elif message == "keepalive" and self.keepalive_supported is not False:
            self.keepalive_supported = False
            log.info("slng: the server does not support 'keepalive'; relying on pings")

    async def check(self) -> str:
        """Open a socket and speak a few words; report the model and the time to first audio."""
        if self.keeper is None:
            raise VoiceError(NO_KEY)
        said = await cold_check(self.keeper, self.stream, self._output_rate, self._clock)
        return f"model '{self._cfg.model_id}' voice '{self._cfg.voice}', {said}"

    async def aclose(self) -> None:
        """The keeper's task closes the socket when it is cancelled."""
