"""SLNG's TTS gateway: the protocol (pure) and the voice that speaks over a warm socket.

Protocol facts, with their sources: docs/protocols.md, "SLNG". In short: two route families,
the native bridge `/v1/bridges/unmute/tts/{provider}/{model}:{variant}` (what SLNG's own client
plugins use; the default) and the per-model routes `/v1/tts/{provider}/{model}:{variant}`, both
with `Authorization: Bearer <key>`. The client sends `init` first; the bridge answers `ready`, a
per-model route a Deepgram-style `Metadata`; either greeting is accepted on either route. Then
`text`, `flush`, `clear` (answered by `cleared`), `keepalive` and `close`; no `cancel` (the newest
reference lists none). The server's message types are compared case-insensitively (`Flushed`,
`Cleared`, `Metadata`, `Error` come capitalised on the per-model routes). Audio comes as binary
frames or as base64 `audio_chunk` messages; `flushed` or `audio_end` ends an utterance. An `error`
(or `Error`) carries `code` and `message` at the top level or under `data`; after the greeting it
means the session is spent, so the socket is replaced. Some upstreams close the socket normally
(1000) after each utterance: the keeper replaces it at once.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from herald.config import SlngConfig
from herald.voice.base import VoiceError
from herald.voice.protocol import Failure, FailureKind, split_text
from herald.voice.socket import LiveSocket, SessionRefused, SocketKeeper, SocketSpec
from herald.voice.streaming import (
    END,
    FrameMeaning,
    SocketFailed,
    SocketVoice,
    Utterance,
    cold_check,
)

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
KEEPALIVE = _message("keepalive")
CLOSE = _message("close")


# --- server messages ------------------------------------------------------------------------


@dataclass(frozen=True)
class Audio:
    data: bytes


@dataclass(frozen=True)
class Ready:
    """The bridge's greeting: the session is open."""

    session_id: str

    def describe(self) -> str:
        return f"ready (session {self.session_id or 'without an id'})"


@dataclass(frozen=True)
class Metadata:
    """A per-model route's greeting (Deepgram's form): the session is open."""

    request_id: str

    def describe(self) -> str:
        return "Metadata (the per-model route)"


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

    def __str__(self) -> str:
        return f"{self.code}: {self.message}" if self.message else self.code or "no detail"

    def mentions(self, *words: str) -> bool:
        said = f"{self.code} {self.message}".lower()
        return any(word in said for word in words)


@dataclass(frozen=True)
class Other:
    """segment_start, segment_end, Warning, and anything this client does not know."""

    kind: str
    text: str


ServerEvent = Audio | Ready | Metadata | End | Cleared | Error | Other
Greeting = Ready | Metadata


def _field(message: dict[str, Any], *names: str) -> str:
    """The first of these fields that is set, at the top level or nested under `data`."""
    nested = message.get("data")
    for source in (nested if isinstance(nested, dict) else {}, message):
        for name in names:
            value = source.get(name)
            if value not in (None, ""):
                return str(value)
    return ""


def decode(frame: str | bytes) -> ServerEvent:
    """One frame from the server as a typed event; never raises. Types in any case."""
    if isinstance(frame, bytes):
        return Audio(frame)
    try:
        message = json.loads(frame)
    except ValueError:
        return Other("", frame[:200])
    if not isinstance(message, dict):
        return Other("", frame[:200])
    kind = str(message.get("type", "")).lower()
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
    if kind == "metadata":
        return Metadata(str(message.get("request_id", "")))
    if kind == "error":
        # SLNG: code/message, top level or under data; Deepgram's form: err_code/err_msg.
        code = _field(message, "code", "err_code")
        return Error(code, _field(message, "message", "err_msg", "description"))
    return Other(kind, frame[:200])


# --- failures -------------------------------------------------------------------------------

# SLNG's error codes (docs/protocols.md, "SLNG"); an unknown code is sorted by its words.
ERROR_KINDS = {
    "auth_error": FailureKind.AUTH,
    "config_error": FailureKind.CONFIG,
    "invalid_request": FailureKind.CONFIG,
    "rate_limit": FailureKind.RATE_LIMITED,
    "provider_error": FailureKind.TRANSIENT,
    "backend_connection_failed": FailureKind.TRANSIENT,
    "backpressure": FailureKind.TRANSIENT,
    "not_ready": FailureKind.TRANSIENT,
    "idle_timeout_exceeded": FailureKind.TRANSIENT,
    "max_connection_duration_exceeded": FailureKind.LIFETIME,
}
HINTS = {
    FailureKind.AUTH: "check the SLNG key",
    FailureKind.CONFIG: "check [voice.slng]",
    FailureKind.LIFETIME: "lower voice.slng.max_age_s",
}
# What an error answering a message says when the server does not know that message.
REFUSAL_WORDS = ("invalid", "unknown", "unsupported", "not supported", "config")


def classify_error(code: str, message: str) -> Failure:
    """What an `error` message means for Herald."""
    said = f"{code}: {message}" if message else code or "an error without a code"
    kind = ERROR_KINDS.get(code.lower()) or _kind_from_words(f"{code} {message}".lower())
    hint = HINTS.get(kind)
    return Failure(kind, f"{said} ({hint})" if hint else said)


def _kind_from_words(words: str) -> FailureKind:
    if any(word in words for word in ("auth", "api key", "forbidden", "permission")):
        return FailureKind.AUTH
    if any(word in words for word in ("config", "invalid", "unsupported", "unknown model")):
        return FailureKind.CONFIG
    if any(word in words for word in ("rate", "quota", "too many", "concurren")):
        return FailureKind.RATE_LIMITED
    return FailureKind.TRANSIENT


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
        return Failure(
            FailureKind.CONFIG, f"{said}: check voice.slng host, route, provider, model and variant"
        )
    if status in (401, 402, 403):
        return Failure(FailureKind.AUTH, f"{said}: the SLNG key was refused")
    if status == 429:
        return Failure(FailureKind.RATE_LIMITED, f"{said}: too many requests")
    return Failure(FailureKind.TRANSIENT, f"{said}: server unavailable")


def spent(event: Error) -> SocketFailed:
    """An error after the greeting: the session is spent. A fresh socket may speak the text
    when the failure is one that passes."""
    failure = classify_error(event.code, event.message)
    replay = failure.kind in (FailureKind.TRANSIENT, FailureKind.LIFETIME)
    return SocketFailed(failure, replay=replay)


# --- the voice --------------------------------------------------------------------------------

GLOBAL_HOST = "api.slng.ai"
REGIONAL_HINT = (
    "if SLNG no longer serves api.slng.ai, set voice.slng.host to your region's gateway, "
    "e.g. 'eu-west.api.slng.ai'"
)
STALL_TIMEOUT_S = 5.0  # no audio for this long in the middle of an utterance: the socket is dead
PROBE_WAIT_S = 0.5  # how long the first keepalive on a socket waits for an error answering it
NO_KEY = (
    "slng has no API key: sudo ./install.sh --slng-key-file FILE, or set "
    "voice.slng.api_key_file or $SLNG_API_KEY"
)


class SlngVoice(SocketVoice):
    """SLNG over one warm socket: init and a greeting (`ready` or `Metadata`) once per socket,
    then text and one flush per announcement; audio is resampled from `sample_rate` to the
    output rate."""

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
        self.first_audio_timeout_s = cfg.first_audio_timeout_s
        self.stall_timeout_s = STALL_TIMEOUT_S
        self._input_rate = cfg.sample_rate
        self._output_rate = output_rate
        # None: not known yet (probed on the next socket); False once the server has said it
        # does not know the message; a transient error answering it decides nothing.
        self.keepalive_supported: bool | None = None
        self.greeting = "nothing yet"  # how the server answered the last `init`, for `check`
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
            classify_handshake=self._classify_handshake,
            goodbye=CLOSE,
            after_open=self._start_session,
            idle_upkeep=self._keep_alive if self._cfg.keepalive_s > 0 else None,
            idle_upkeep_s=self._cfg.keepalive_s or 20.0,
            reconnect_after_normal_close=True,
        )

    @property
    def _on_global_host(self) -> bool:
        """The global host, which SLNG's pipecat plugin says is no longer supported."""
        return self._cfg.url is None and self._cfg.host == GLOBAL_HOST

    def _classify_handshake(self, status: int, detail: str | None) -> Failure:
        failure = classify_handshake(status, detail)
        if self._on_global_host and (failure.kind is FailureKind.CONFIG or status in (410, 421)):
            return Failure(failure.kind, f"{failure.detail}; {REGIONAL_HINT}")
        return failure

    # --- on the socket ----------------------------------------------------------------------

    async def _start_session(self, connection: ClientConnection) -> None:
        """`init`, then wait (bounded) for a greeting; an `error` instead refuses the session."""
        await connection.send(init(self._cfg))
        try:
            async with asyncio.timeout(self._cfg.ready_timeout_s):
                while True:
                    event = decode(await connection.recv())
                    if isinstance(event, Ready | Metadata):
                        self.greeting = event.describe()
                        log.debug("slng: init answered with %s", self.greeting)
                        return
                    if isinstance(event, Error):
                        raise SessionRefused(classify_error(event.code, event.message))
        except TimeoutError:
            wait = self._cfg.ready_timeout_s
            failure = Failure(
                FailureKind.TRANSIENT,
                f"no 'ready' or 'Metadata' within {wait:g} s of 'init': "
                "check voice.slng host, route or url",
            )
            raise SessionRefused(failure) from None

    async def _send_text(self, said: Utterance) -> None:
        """What is stale on the socket is dropped first; then the text, and one `flush`."""
        connection = said.live.connection
        await self._discard_stale(connection)
        for piece in split_text(said.text, MAX_TEXT_CHARS):
            await connection.send(text(piece))
        await connection.send(FLUSH)

    def _read(self, frame: str | bytes, said: Utterance) -> FrameMeaning:
        """Audio; the end at an end marker after some audio; an error spends the session,
        unless it answers a keepalive."""
        event = decode(frame)
        if isinstance(event, Audio):
            return event.data
        if isinstance(event, End):
            # Before any audio, an end marker is the second one of the utterance before
            # (servers may send both `flushed` and `audio_end`): not ours.
            return END if said.heard else None
        if isinstance(event, Error):
            if not self._answers_keepalive(event):
                raise spent(event)
            # An answer to a keepalive sent just before this text, not to the text:
            # finish the text, then replace the socket in case the session is spent.
            said.retire_after = f"error answering 'keepalive' ({event})"
        elif isinstance(event, Other) and event.kind == "warning":
            log.info("slng: warning from the server: %s", event.text)
        return None

    async def _discard_stale(self, connection: ClientConnection) -> None:
        """Read what arrived while the socket was idle, without waiting: a late end marker or
        audio is dropped; an error means the session is spent, and the text goes to a fresh
        socket (nothing of it has been sent or heard)."""
        await asyncio.sleep(0)  # one turn of the loop: frames already on the wire are read
        while True:
            try:
                async with asyncio.timeout(0):  # only what is already here
                    event = decode(await connection.recv())
            except TimeoutError:
                return
            if isinstance(event, Error):
                self._answers_keepalive(event)
                failure = classify_error(event.code, event.message)
                detail = f"the session ended while idle: {failure.detail}"
                raise SocketFailed(Failure(failure.kind, detail), replay=True)
            log.debug("slng: dropped a stale %s", type(event).__name__)

    async def _interrupt(self, live: LiveSocket) -> None:
        """`clear`, and swallow the stale audio until `cleared`; an error instead means the
        session is spent, and no answer in time that the socket is: either way it is replaced."""
        assert self.keeper is not None
        connection = live.connection
        try:
            await connection.send(CLEAR)
            async with asyncio.timeout(self._cfg.clear_timeout_s):
                while not isinstance(event := decode(await connection.recv()), Cleared):
                    if isinstance(event, Error):
                        self._answers_keepalive(event)
                        self.keeper.retire(live, f"error after 'clear' ({event})")
                        return
        except (TimeoutError, ConnectionClosed):
            self.keeper.retire(live, "no 'cleared' after 'clear'")

    async def _keep_alive(self, connection: ClientConnection) -> None:
        """The idle upkeep: `keepalive`. The first one on each socket (until the server has
        taken one without complaint) waits briefly for an error answering it."""
        if self.keepalive_supported is False:
            return
        await connection.send(KEEPALIVE)
        if self.keepalive_supported:
            return
        try:
            async with asyncio.timeout(PROBE_WAIT_S):
                while not isinstance(event := decode(await connection.recv()), Error):
                    pass  # nothing else is due while idle
        except TimeoutError:
            self.keepalive_supported = True
            return
        self._answers_keepalive(event, probing=True)
        # An error after the greeting spends the session: replace the socket now, while idle.
        log.info("slng: error while idle (%s); replacing the socket", event)
        await connection.send(CLOSE)
        await connection.close(1000, "session spent")

    def _answers_keepalive(self, event: Error, probing: bool = False) -> bool:
        """Whether the error answers a `keepalive`; one that says the server does not know the
        message turns keepalive off for good, any other leaves it on."""
        if not (probing or event.mentions("keepalive")):
            return False
        if event.mentions(*REFUSAL_WORDS):
            if self.keepalive_supported is not False:
                self.keepalive_supported = False
                log.info("slng: the server does not support 'keepalive'; relying on pings")
        else:
            log.info("slng: a transient error answered 'keepalive' (%s); keepalive stays on", event)
        return True

    async def check(self) -> str:
        """Open a socket and speak a few words; report the greeting, the model and the time to
        first audio."""
        if self.keeper is None:
            raise VoiceError(NO_KEY)
        try:
            said = await cold_check(self.keeper, self.stream, self._output_rate, self._clock)
        except VoiceError as exc:
            # The server could not be reached or did not answer: perhaps the host is wrong.
            failure = self.keeper.last_failure
            transient = failure is not None and failure.kind is FailureKind.TRANSIENT
            if transient and self._on_global_host and REGIONAL_HINT not in str(exc):
                raise VoiceError(f"{exc}; {REGIONAL_HINT}") from None
            raise
        return (
            f"SLNG answered init with {self.greeting}; "
            f"model '{self._cfg.model_id}' voice '{self._cfg.voice}', {said}"
        )
