"""A fake SLNG TTS gateway: a real WebSocket peer on loopback for tests.

It speaks every variant docs/protocols.md ("SLNG") lists, so that the voice is tested against
each, not only the one it expects. Both route families, with `Authorization: Bearer <key>` (else
HTTP 401): the native bridge `/v1/bridges/unmute/tts/{provider}/{model}:{variant}`, which answers
`init` with `ready` and sends lower-case types, and the per-model routes
`/v1/tts/{provider}/{model}:{variant}`, which answer it with a Deepgram-style `Metadata` and send
`Flushed`/`Cleared` (with `sequence_id`), `Metadata` and `Error` capitalised; options cross them
(either greeting, either case, on either route). Then `text` (with an optional `flush`), `flush`,
`clear` (answered by `cleared`), `keepalive` and `close`. `cancel` is not in the newest bridge
reference, so it is refused like any message the server does not know (`invalid_request`), or
ignored by option. Each flush is spoken as `segment_start`, audio, `segment_end`, `flushed` and
optionally `audio_end`; audio goes as binary frames or as base64 `audio_chunk {data, sequence}`.
Errors come as `error` or `Error`, with `code`/`message` at the top level or nested in `data`;
after the greeting an error spends the session (it answers nothing more but `close`). Options
make it close normally (1000) after each utterance as some upstreams do, answer `init`, a flush,
a keepalive or the middle of an utterance with an error of any code, and end an idle session
(with an `idle_timeout_exceeded` error, a close, or both).

The audio is tests.fake_deepgram's tone: its pitch and length are functions of the text, so a
test can tell which utterance it hears. `LoopbackServer` and `ServerSession` are shared with
tests/fake_gateway.py (and the server's plumbing, tests.fake_server's `FakeServer`, with
tests/fake_deepgram.py too); `RecordingSink` is an audio output that keeps what a Speaker plays.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from herald.audio.dsp import Samples
from tests.fake_deepgram import send_tone
from tests.fake_server import FakeServer, JsonObject, parse_object, reap, sleep_until

# --- what both fakes share -----------------------------------------------------------------------


class LoopbackServer(FakeServer):
    """A fake whose sessions are `ServerSession`s: JSON messages in, one utterance at a time out."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        super().__init__(host, port)
        self.syntheses = 0  # utterances the server started to synthesize
        self.received: list[tuple[int, JsonObject]] = []  # client JSON by connection index

    def types_received(self, kind_key: str = "type") -> list[str]:
        return [str(message.get(kind_key)) for _, message in self.received]

    async def wait_for_connections(self, n: int, timeout: float = 5.0) -> None:  # noqa: ASYNC109
        """Wait (bounded) until `n` handshakes were accepted and a socket is open."""
        await self.wait_until(lambda: self.connections >= n and self.open_connections > 0, timeout)

    def _session(self, ws: ServerConnection, index: int) -> ServerSession:
        raise NotImplementedError


class ServerSession:
    """One socket: a reader handing JSON to `on_message`, and a speaker doing one job at a time."""

    def __init__(self, server: LoopbackServer, ws: ServerConnection, index: int) -> None:
        self.server = server
        self.ws = ws
        self.index = index
        self.last_message = time.monotonic()
        self._jobs: asyncio.Queue[Any] = asyncio.Queue()
        self._speaker: asyncio.Task[None] | None = None
        self._closing = False

    async def run(self) -> None:
        reader = asyncio.create_task(self._read_loop(), name=f"fake-{self.index}-reader")
        watchdog = asyncio.create_task(self.watch(), name=f"fake-{self.index}-watchdog")
        self._start_speaker()
        try:
            await self.ws.wait_closed()
        finally:
            await reap([reader, watchdog, self._speaker])

    async def close(self, code: int, reason: str) -> None:
        if self._closing:
            return
        self._closing = True
        self.server.log_close(code, reason)
        await self.ws.close(code, reason)

    async def send_json(self, message: JsonObject) -> None:
        self.server.sent.append((self.index, message))
        self.server.notify()
        await self.ws.send(json.dumps(message))

    async def _read_loop(self) -> None:
        with contextlib.suppress(ConnectionClosed):
            async for frame in self.ws:
                self.last_message = time.monotonic()
                message = parse_object(frame) if isinstance(frame, str) else None
                self.server.received.append((self.index, message or {}))
                self.server.notify()
                if message is None:
                    await self.close(1003, "JSON text frames only")
                    return
                await self.on_message(message)

    async def on_message(self, message: JsonObject) -> None:
        raise NotImplementedError

    async def watch(self) -> None:
        """Timers of the session (an idle timeout); returns when there are none."""

    # speaking

    def enqueue(self, job: object) -> None:
        self._jobs.put_nowait(job)

    def _start_speaker(self) -> None:
        self._speaker = asyncio.create_task(self._speak_loop(), name=f"fake-{self.index}-speaker")

    async def stop_audio(self) -> None:
        """Stop the job being spoken, drop the waiting ones, and start afresh."""
        await reap([self._speaker])
        while not self._jobs.empty():
            self._jobs.get_nowait()
        self._start_speaker()

    async def _speak_loop(self) -> None:
        with contextlib.suppress(ConnectionClosed):
            while True:
                await self.perform(await self._jobs.get())

    async def perform(self, job: Any) -> None:
        raise NotImplementedError

    async def stream_tone(
        self,
        text: str,
        rate: int,
        options: ToneOptions,
        send: Callable[[bytes, int], Awaitable[None]],
    ) -> float:
        """Send the text's tone in `chunk_ms` pieces, paced; return its length in seconds."""
        return await send_tone(
            text,
            rate,
            send,
            chunk_ms=options.chunk_ms,
            pace=options.pace,
            seconds_per_char=options.seconds_per_char,
        )


@dataclass
class ToneOptions:
    first_byte_s: float = 0.05  # from the request to the first audio
    pace: float = 0.0  # 0: as fast as possible; 1.0: real time
    chunk_ms: int = 20
    seconds_per_char: float = 0.06


class RecordingSink:
    """An AudioSink that keeps every sample played and when the first one came."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self._clock = clock
        self.chunks: list[Samples] = []
        self.first_at: float | None = None
        self.drops = 0
        self.placed_at: list[float] = []  # each place() asked for

    async def open(self) -> None:
        pass

    async def play(self, samples: Samples) -> None:
        if self.first_at is None:
            self.first_at = self._clock()
        self.chunks.append(samples.copy())

    def place(self, at: float) -> None:
        self.placed_at.append(at)

    async def finish(self) -> None:
        pass

    def drop(self) -> None:
        self.drops += 1

    async def close(self) -> None:
        pass

    def samples(self) -> Samples:
        return np.concatenate(self.chunks) if self.chunks else np.zeros(0, np.int16)

    def reset(self) -> None:
        self.chunks, self.first_at = [], None


# --- SLNG ---------------------------------------------------------------------------------------

# SLNG's two route families (docs/protocols.md, "SLNG"): its native bridge and the per-model routes.
BRIDGE_PREFIX = "/v1/bridges/unmute/tts/"
PER_MODEL_PREFIX = "/v1/tts/"
ROUTE_PREFIXES = {"bridge": BRIDGE_PREFIX, "per-model": PER_MODEL_PREFIX}
Route = Literal["bridge", "per-model"]
# The types a per-model route sends capitalised, in Deepgram's style (and `Ready`, to prove that
# the case of every type is free).
CAPITALISED = {"ready", "metadata", "flushed", "cleared", "error", "warning"}


@dataclass
class FakeSlngOptions(ToneOptions):
    """How the fake behaves. The handshake reads it live; a session copies it when accepted.

    `greeting` and `capitalised` left at None follow the route the client dialled: the bridge
    answers `init` with `ready` and sends lower-case types; a per-model route answers it with a
    Deepgram-style `Metadata` and sends `Flushed`/`Cleared` (with `sequence_id`), `Metadata` and
    `Error` capitalised.
    """

    api_key: str = "slng-test-key"
    greeting: Literal["ready", "Metadata", "none"] | None = None  # "none": `init` is not answered
    capitalised: bool | None = None
    binary_audio: bool = True  # False: base64 `audio_chunk {data, sequence}` messages
    segments: bool = True  # segment_start / segment_end around each flush
    audio_end: bool = False  # `audio_end {duration}` after `flushed`
    close_after_utterance: bool = False  # then close 1000, as some upstreams do
    nested_errors: bool = False  # `{type: error, data: {code, message}}` instead of top level
    # The newest bridge reference lists no `cancel`: like any message it does not list, it is
    # answered with `invalid_request` ("refuse"); "ignore" drops it silently.
    cancel: Literal["refuse", "ignore"] = "refuse"
    keepalive_supported: bool = True  # False: `keepalive` is answered with `invalid_request`
    keepalive_errors: int = 0  # the first n keepalives (on any socket) get a transient error
    keepalive_error: tuple[str, str] = ("backend_connection_failed", "upstream connection reset")
    # After an error that follows the greeting, the session answers nothing but `close` (the
    # client plugins treat such an error as the end of the session).
    spend_on_error: bool = True
    init_error: tuple[str, str] | None = None  # answer `init` with this error (code, message)
    flush_error: tuple[str, str] | None = None  # answer every flush with this error, no audio
    mid_error: tuple[str, str] | None = None  # this error after 3 audio chunks...
    mid_errors: int = 1  # ...of the first n utterances (on any socket)
    idle_timeout_s: float | None = None  # no client message this long: the session ends
    idle_error: bool = False  # then first an error `idle_timeout_exceeded`
    idle_close: bool = True  # then close 1011 (False: the socket stays open, the session spent)
    handshake_status: int | None = None  # refuse every handshake with this HTTP status
    voices: set[str] = field(default_factory=lambda: {"aura-2-thalia-en", "aura-2-andromeda-en"})
    sample_rates: set[int] = field(default_factory=lambda: {8000, 16000, 24000, 48000})


class FakeSlng(LoopbackServer):
    path = BRIDGE_PREFIX + "deepgram/aura:2"

    def __init__(self, options: FakeSlngOptions | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.options = options if options is not None else FakeSlngOptions()
        self.paths: list[str] = []  # of every accepted handshake
        self.inits: list[JsonObject] = []
        self.keepalives_refused = 0  # transient errors sent for `keepalive`, on any socket
        self.mid_errors_sent = 0

    @property
    def template(self) -> str:
        """A `voice.slng.url` for the bridge on this fake, with the placeholders left in."""
        return self.template_for("bridge")

    def template_for(self, route: Route) -> str:
        prefix = ROUTE_PREFIXES[route]
        return f"ws://{self.host}:{self.port}{prefix}{{provider}}/{{model}}:{{variant}}"

    def types_sent(self) -> list[str]:
        return [str(message.get("type")) for _, message in self.sent]

    async def _process_request(
        self, connection: ServerConnection, request: Request
    ) -> Response | None:
        if self.options.handshake_status is not None:
            return self.refuse(connection, self.options.handshake_status, "refused\n")
        if route_of(request.path) is None or ":" not in request.path:
            return self.refuse(connection, 404, "no such model\n")
        if request.headers.get("Authorization") != f"Bearer {self.options.api_key}":
            return self.refuse(connection, 401, '{"error": "invalid API key"}\n')
        self.paths.append(request.path)
        return None

    def _session(self, ws: ServerConnection, index: int) -> ServerSession:
        return _SlngSession(self, ws, index)


def route_of(path: str) -> Route | None:
    if path.startswith(BRIDGE_PREFIX):
        return "bridge"
    if path.startswith(PER_MODEL_PREFIX):
        return "per-model"
    return None


class _Spent(Exception):
    """The session is spent: the audio being sent stops."""


class _SlngSession(ServerSession):
    server: FakeSlng

    def __init__(self, server: FakeSlng, ws: ServerConnection, index: int) -> None:
        super().__init__(server, ws, index)
        self.options = dataclasses.replace(server.options)
        route = route_of(ws.request.path if ws.request else "") or "bridge"
        per_model = route == "per-model"
        if self.options.greeting is None:
            self.options.greeting = "Metadata" if per_model else "ready"
        if self.options.capitalised is None:
            self.options.capitalised = per_model
        self._rate = 24000
        self._ready = False
        self._spent = False
        self._flushes = 0
        self._text: list[str] = []

    def _type(self, kind: str) -> str:
        return kind.capitalize() if self.options.capitalised and kind in CAPITALISED else kind

    async def send_typed(self, kind: str, **fields: Any) -> None:
        await self.send_json({"type": self._type(kind), **fields})

    async def on_message(self, message: JsonObject) -> None:
        kind = message.get("type")
        if kind == "init":
            await self._on_init(message)
        elif kind == "close":
            self._flush()
            self.enqueue(None)
        elif self._spent:
            pass  # a spent session answers nothing
        elif not self._ready:
            await self._error("not_ready", "send init first")
        elif kind == "text" and isinstance(message.get("text"), str):
            self._text.append(message["text"])
            if message.get("flush"):
                self._flush()
        elif kind == "flush":
            self._flush()
        elif kind == "clear":
            await self.stop_audio()
            self._text.clear()
            if self.options.capitalised:
                await self.send_typed("cleared", sequence_id=self._flushes - 1)
            else:
                await self.send_typed("cleared")
        elif kind == "cancel" and self.options.cancel == "ignore":
            pass
        elif kind == "keepalive" and self.options.keepalive_supported:
            if self.server.keepalives_refused < self.options.keepalive_errors:
                self.server.keepalives_refused += 1
                await self._error(*self.options.keepalive_error)
        else:
            await self._error("invalid_request", f"unknown message type: {kind}")

    async def _on_init(self, message: JsonObject) -> None:
        config = message.get("config") or {}
        self.server.inits.append(message)
        if self.options.init_error is not None:
            await self._error(*self.options.init_error)
        elif message.get("voice") not in self.options.voices:
            await self._error("config_error", f"unknown voice: {message.get('voice')}")
        elif config.get("sample_rate", 24000) not in self.options.sample_rates:
            await self._error("config_error", f"unsupported sample_rate {config['sample_rate']}")
        elif config.get("encoding", "linear16") != "linear16":
            await self._error("config_error", "this fake speaks linear16 only")
        else:
            self._rate = int(config.get("sample_rate", 24000))
            self._ready = True
            if self.options.greeting == "ready":
                await self.send_typed("ready", session_id=str(uuid.uuid4()))
            elif self.options.greeting == "Metadata":
                await self.send_typed(
                    "metadata",
                    request_id=str(uuid.uuid4()),
                    model_name=message.get("voice"),
                    model_version="2",
                    model_uuid=str(uuid.uuid4()),
                )

    async def _error(self, code: str, message: str) -> None:
        if self.options.nested_errors:
            await self.send_typed("error", data={"code": code, "message": message})
        else:
            await self.send_typed("error", code=code, message=message)
        if self._ready and self.options.spend_on_error:
            self._spent = True  # the audio being sent stops at its next chunk

    def _flush(self) -> None:
        if self._text:
            self.enqueue(("".join(self._text), time.monotonic() + self.options.first_byte_s))
            self._text.clear()

    async def perform(self, job: Any) -> None:
        if job is None:  # `close`: everything before it has been spoken
            await self.close(1000, "")
            return
        text, ready_at = job
        await sleep_until(ready_at)
        if self._spent:
            return
        if self.options.flush_error is not None:
            await self._error(*self.options.flush_error)
            return
        self.server.syntheses += 1
        self.server.notify()
        if self.options.segments:
            await self.send_typed("segment_start", segment_id=f"seg_{self.index}")
        try:
            seconds = await self.stream_tone(text, self._rate, self.options, self._send_audio)
        except _Spent:
            return
        if self.options.segments:
            await self.send_typed("segment_end", segment_id=f"seg_{self.index}")
        if self.options.capitalised:
            await self.send_typed("flushed", sequence_id=self._flushes)
        else:
            await self.send_typed("flushed")
        self._flushes += 1
        if self.options.audio_end:
            await self.send_typed("audio_end", duration=seconds)
        if self.options.close_after_utterance:
            await self.close(1000, "")

    async def _send_audio(self, data: bytes, sequence: int) -> None:
        if self._spent:
            raise _Spent  # a spent session sends no more audio
        if (
            sequence == 3
            and self.options.mid_error is not None
            and self.server.mid_errors_sent < self.options.mid_errors
        ):
            self.server.mid_errors_sent += 1
            await self._error(*self.options.mid_error)
            raise _Spent  # this utterance ends here, with no end marker
        if self.options.binary_audio:
            await self.ws.send(data)
        else:
            chunk = {
                "type": "audio_chunk",
                "data": base64.b64encode(data).decode(),
                "sequence": sequence,
            }
            await self.ws.send(json.dumps(chunk))

    async def watch(self) -> None:
        if self.options.idle_timeout_s is None:
            return
        while True:
            idle_end = self.last_message + self.options.idle_timeout_s
            if time.monotonic() >= idle_end:
                break
            await asyncio.sleep(max(idle_end - time.monotonic(), 0.001))
        if self.options.idle_error:
            await self._error("idle_timeout_exceeded", "no message from the client in time")
        if self.options.idle_close:
            await self.close(1011, "idle timeout")
