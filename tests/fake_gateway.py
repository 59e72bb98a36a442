"""A fake self-hosted TTS gateway: a real WebSocket peer on loopback for tests.

It follows /work/shared/docs/tts-protocols.md section 3: `/api/v1/ws`, no authentication;
`{"action": "synthesize", "text": ...}` is answered with binary 16-bit mono PCM at the server's
`sample_rate` (its TTS_SAMPLE_RATE, 24000 by default) and then `{"action": "done"}`;
`{"action": "cancel"}` stops the synthesis (with no acknowledgement unless `done_after_cancel`).
When its provider fails (`provider_fails`), the server closes the socket, with code 1000 as a
FastAPI server's `websocket.close()` does. The audio is tests.fake_deepgram's tone per text.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Any

from websockets.asyncio.server import ServerConnection
from websockets.http11 import Request, Response

from tests.fake_slng import JsonObject, LoopbackServer, ServerSession, ToneOptions, sleep_until

WS_PATH = "/api/v1/ws"


@dataclass
class FakeGatewayOptions(ToneOptions):
    """How the fake behaves. A session copies it when accepted, but `provider_fails` is live."""

    sample_rate: int = 24000  # the server's TTS_SAMPLE_RATE
    provider_fails: bool = False  # a synthesize closes the socket instead of speaking
    failure_close_code: int = 1000
    done_after_cancel: bool = False


class FakeGateway(LoopbackServer):
    path = WS_PATH

    def __init__(self, options: FakeGatewayOptions | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.options = options if options is not None else FakeGatewayOptions()

    async def _process_request(
        self, connection: ServerConnection, request: Request
    ) -> Response | None:
        if request.path != WS_PATH:
            return self.refuse(connection, 404, "Not Found\n")
        return None

    def _session(self, ws: ServerConnection, index: int) -> ServerSession:
        return _GatewaySession(self, ws, index)


class _GatewaySession(ServerSession):
    server: FakeGateway

    def __init__(self, server: FakeGateway, ws: ServerConnection, index: int) -> None:
        super().__init__(server, ws, index)
        self.options = dataclasses.replace(server.options)

    async def on_message(self, message: JsonObject) -> None:
        action = message.get("action")
        if action == "synthesize" and isinstance(message.get("text"), str):
            if self.server.options.provider_fails:
                await self.close(self.options.failure_close_code, "")  # after logging, it closes
                return
            self.enqueue((message["text"], time.monotonic() + self.options.first_byte_s))
        elif action == "cancel":
            await self.stop_audio()
            if self.options.done_after_cancel:
                await self.send_json({"action": "done"})

    async def perform(self, job: Any) -> None:
        text, ready_at = job
        await sleep_until(ready_at)
        self.server.syntheses += 1
        self.server.notify()
        await self.stream_tone(text, self.options.sample_rate, self.options, self._send_audio)
        await self.send_json({"action": "done"})

    async def _send_audio(self, data: bytes, _sequence: int) -> None:
        await self.ws.send(data)
