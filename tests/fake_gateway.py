"""A fake self-hosted TTS gateway: a real WebSocket peer on loopback for tests.

It follows the gateway's source as docs/protocols.md ("The self-hosted gateway") describes it:
`/api/v1/ws`, no authentication; `{"action": "synthesize", "text": ...}` is answered with binary
16-bit mono PCM and then `{"action": "done"}`; `{"action": "cancel"}` stops the synthesis with no
answer of its own. The audio is tests.fake_deepgram's tone per text. Beyond that, each way the
real gateway misbehaves is an option (the provider it comes from in brackets):

- `provider_fails` (live): a synthesize closes the socket (code 1000, as a FastAPI server's
  `websocket.close()` does): the seed's account of a provider failure;
- `failure` (live): "done": `done` after only `failure_after` of the audio (0: none), as when a
  provider catches its own error (ElevenLabs, Cartesia, Deepgram); "silent": that much audio,
  then nothing at all, no `done` and no close, as when the synthesis task dies of an exception
  (OpenAI, Deepgram's HTTP errors);
- `sends_rate`: the audio is at this rate whatever `sample_rate` (TTS_SAMPLE_RATE) says: 16000
  for OpenAI;
- `done_after_cancel`: a cancel that catches a synthesis running is followed by its `done`,
  `cancel_done_delay_s` later (ElevenLabs, Deepgram and Cartesia swallow the cancellation);
- `empty_frames`: an empty binary frame ends each synthesis, and precedes a silent death (OpenAI);
- `shared_close`: one provider serves every connection and a disconnect calls its close():
  "breaks": every synthesis then dies silently until a connection opens (OpenAI's client is
  gone until `initialize()` makes another); "cuts": a synthesis running on another connection
  stops at once and sends `done` (ElevenLabs and Cartesia close the upstream socket it reads);
- `gateway_cache`: the same text is replayed from the server's cache; `cache_partial`: chunks are
  kept as they are sent, also when a cancel or a failure stops them (ElevenLabs, Deepgram,
  Cartesia; OpenAI keeps only a complete synthesis).

`provider_preset(name)` gives the options of each of the gateway's providers.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from dataclasses import dataclass
from typing import Any

from websockets.asyncio.server import ServerConnection
from websockets.http11 import Request, Response

from tests.fake_deepgram import synthesize
from tests.fake_server import JsonObject, sleep_until
from tests.fake_slng import LoopbackServer, ServerSession, ToneOptions

WS_PATH = "/api/v1/ws"
CACHE_CHUNK = 4096  # bytes a cached phrase is replayed in


@dataclass
class FakeGatewayOptions(ToneOptions):
    """How the fake behaves. A session copies it when accepted; the fields marked live are read
    from the server's options at each synthesize."""

    sample_rate: int = 24000  # the server's TTS_SAMPLE_RATE
    provider_fails: bool = False  # live: a synthesize closes the socket instead of speaking
    failure_close_code: int = 1000
    failure: str | None = None  # live: None, "done" or "silent"
    failure_after: float = 0.0  # the share of the audio sent before a failure
    sends_rate: int | None = None  # the rate the audio is really at (OpenAI: 16000)
    done_after_cancel: bool = False
    cancel_done_delay_s: float = 0.0
    empty_frames: bool = False
    shared_close: str | None = None  # None, "breaks" or "cuts"
    gateway_cache: bool = False
    cache_partial: bool = True


def provider_preset(provider: str, **overrides: Any) -> FakeGatewayOptions:
    """The fake as the gateway behaves with one of its providers (and `overrides`)."""
    presets: dict[str, dict[str, Any]] = {
        "elevenlabs": {"done_after_cancel": True, "shared_close": "cuts"},
        "cartesia": {"done_after_cancel": True, "shared_close": "cuts"},
        "deepgram": {"done_after_cancel": True},
        "openai": {
            "sends_rate": 16000,
            "empty_frames": True,
            "shared_close": "breaks",
            "cache_partial": False,
        },
    }
    return FakeGatewayOptions(**{**presets[provider], **overrides})


class FakeGateway(LoopbackServer):
    path = WS_PATH

    def __init__(self, options: FakeGatewayOptions | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.options = options if options is not None else FakeGatewayOptions()
        self.broken = False  # shared_close "breaks": the provider was closed
        self.silent_deaths = 0  # syntheses that ended with no done and no close
        self.cache: dict[str, bytes] = {}  # the gateway's phrase cache: text -> audio
        self.gateway_sessions: set[_GatewaySession] = set()

    async def _process_request(
        self, connection: ServerConnection, request: Request
    ) -> Response | None:
        if request.path != WS_PATH:
            return self.refuse(connection, 404, "Not Found\n")
        return None

    def _session(self, ws: ServerConnection, index: int) -> ServerSession:
        return _GatewaySession(self, ws, index)

    def provider_closed(self, by: _GatewaySession) -> None:
        """What a disconnect's call to the shared provider's close() does to the others."""
        if self.options.shared_close == "breaks":
            self.broken = True
        elif self.options.shared_close == "cuts":
            for session in self.gateway_sessions - {by}:
                session.cut = True
        self.notify()


class _GatewaySession(ServerSession):
    server: FakeGateway

    def __init__(self, server: FakeGateway, ws: ServerConnection, index: int) -> None:
        super().__init__(server, ws, index)
        self.options = dataclasses.replace(server.options)
        self.busy = False  # a synthesis is running (a cancel would catch it)
        self.cut = False  # another connection's close cut the running synthesis
        self._late: set[asyncio.Task[None]] = set()

    async def run(self) -> None:
        self.server.broken = False  # initialize() on every connection: OpenAI makes a client
        self.server.gateway_sessions.add(self)
        try:
            await super().run()
        finally:
            self.server.gateway_sessions.discard(self)
            for task in self._late:
                task.cancel()
            self.server.provider_closed(self)

    async def on_message(self, message: JsonObject) -> None:
        action = message.get("action")
        if action == "synthesize" and isinstance(message.get("text"), str):
            if self.server.options.provider_fails:
                await self.close(self.options.failure_close_code, "")  # after logging, it closes
                return
            self.enqueue((message["text"], time.monotonic() + self.options.first_byte_s))
        elif action == "cancel":
            caught = self.busy
            await self.stop_audio()
            if self.options.done_after_cancel and caught:
                late = asyncio.create_task(self._done_later(self.options.cancel_done_delay_s))
                self._late.add(late)
                late.add_done_callback(self._late.discard)

    async def _done_later(self, delay_s: float) -> None:
        await asyncio.sleep(delay_s)
        await self.send_json({"action": "done"})

    async def perform(self, job: Any) -> None:
        text, ready_at = job
        self.busy, self.cut = True, False
        try:
            await sleep_until(ready_at)
            await self._synthesize(text)
        finally:
            self.busy = False

    async def _synthesize(self, text: str) -> None:
        server, options = self.server, self.options
        if server.broken:  # the provider's client is gone: the task dies at once
            await self._die()
            return
        server.syntheses += 1
        server.notify()
        cached = server.cache.get(text) if options.gateway_cache else None
        if cached is not None:
            for start in range(0, len(cached), CACHE_CHUNK):
                await self.ws.send(cached[start : start + CACHE_CHUNK])
            await self._finish()
            return
        failure, after = server.options.failure, server.options.failure_after
        rate = options.sends_rate or options.sample_rate
        audio = synthesize(text, rate, options.seconds_per_char)
        limit = len(audio) if failure is None else int(len(audio) * after) // 2 * 2
        await self._stream(audio[:limit], rate, text)
        if failure == "silent":
            await self._die()
        else:
            await self._finish()

    async def _stream(self, audio: bytes, rate: int, text: str) -> None:
        """Send `audio` in `chunk_ms` pieces, paced; stop early when cut. What was sent goes
        into the gateway's cache (only when complete, unless `cache_partial`)."""
        options = self.options
        step = max(2, rate * options.chunk_ms // 1000 * 2)
        interval = options.chunk_ms / 1000 / options.pace if options.pace > 0 else 0.0
        started = time.monotonic()
        sent = 0
        try:
            for k, first in enumerate(range(0, len(audio), step)):
                await sleep_until(started + k * interval)  # yields even when due: a cancel gets in
                if self.cut:
                    break
                await self.ws.send(audio[first : first + step])
                sent = min(len(audio), first + step)
        finally:
            complete = sent == len(audio) and not self.cut and self.server.options.failure is None
            if options.gateway_cache and (options.cache_partial or complete):
                self.server.cache[text] = audio[:sent]

    async def _finish(self) -> None:
        if self.options.empty_frames:
            await self.ws.send(b"")
        await self.send_json({"action": "done"})

    async def _die(self) -> None:
        if self.options.empty_frames:
            await self.ws.send(b"")  # OpenAI yields its end-of-stream mark, then raises
        self.server.silent_deaths += 1
        self.server.notify()
