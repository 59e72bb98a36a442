"""A fake Deepgram Aura streaming TTS server: a real WebSocket peer on loopback for tests.

It follows docs/protocols.md, "Deepgram Aura" (the live service, today): the `/v1/speak`
handshake with `Authorization: Token <key>` and query parameters, `Metadata` first, `Speak`,
`Flush`/`Flushed`, `Clear`/`Cleared`, `Close`, the `EXCESSIVE_FLUSH` warning, the close codes
and the limits. Audio is a sine tone per utterance whose pitch (`tone_hz`) and length
(`seconds_for`) are functions of the text, so a test can tell from the samples (`dominant_hz`)
which utterance it hears.

What Deepgram leaves open, the fake offers each way (see FakeDeepgramOptions): the form of
`sequence_id` (`sequence_ids`), whether a Flush cut short by Clear is still answered by a Flushed,
before or after Cleared (`cleared_flushed`), close reasons as the bare code or in prose with the
code inside (`reason_style`), and whether an idle socket is closed 1011 NET-0001 or 1000
(`idle_close_code`). `close_log` always records the bare code.

Use it as `async with FakeDeepgram(options) as server:` and connect to `server.url`, or run
`python -m tests.fake_deepgram --port 0` and read the URL from the first line of stdout. With
`--control` that process also obeys commands on stdin, one a line, answering each with one JSON
line on stdout (see `obey`): a test in another process can drop its connections, refuse
handshakes, or SIGKILL it and start it again on the same `--port`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import math
import signal
import sys
import time
import uuid
import weakref
import zlib
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from types import UnionType
from typing import Any, TypedDict, get_args, get_type_hints
from urllib.parse import parse_qs, urlsplit

import numpy as np
import numpy.typing as npt
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from tests.fake_server import FakeServer, parse_object, reap, sleep_until
from tests.fake_server import JsonObject as JsonObject  # for the tests that read the fake's JSON

SPEAK_PATH = "/v1/speak"
DEFAULT_MODEL = "aura-asteria-en"  # what the live service picks when `model` is missing
DEFAULT_SAMPLE_RATE = 24000
AMPLITUDE = 0.3  # of full scale
DG_ERRORS = {
    400: "BAD_REQUEST",
    401: "INVALID_AUTH",
    402: "PAYMENT_REQUIRED",
    403: "INSUFFICIENT_PERMISSIONS",
    404: "NOT_FOUND",
    429: "TOO_MANY_REQUESTS",
    503: "SERVICE_UNAVAILABLE",
}

# How the fake writes the sequence_id of the n-th Flushed (or Cleared) of a socket, counting from
# 0: "count" is what Herald expects (n); the others are what a server might do instead.
SEQUENCE_ID_FORMS = ("count", "absent", "null", "string", "float", "bool", "constant", "one_based")
CLEARED_FLUSHED = ("none", "before", "after")  # a cut Flush's Flushed: never, or around Cleared
REASON_STYLES = ("code", "prose")
# Deepgram's other sockets close with prose that names the code in a link, e.g. "... See
# https://dpgr.am/net0001"; these are the fake's words for each code (under 123 bytes each).
PROSE = {
    "MESSAGE-0000": "Binary messages are not supported",
    "DATA-0000": "The message was not a valid command",
    "DATA-0001": "Too many characters in the recent window",
    "BIG-0000": "The message was too large",
    "BIG-0001": "The text was too long",
    "NET-0000": "The service encountered an internal error",
    "NET-0001": "Deepgram did not receive a text message within the timeout window",
    "NET-0002": "The service failed to send audio",
    "NET-0003": "The connection exceeded its maximum duration",
}


def sequence_field(form: str, n: int) -> JsonObject:
    """The sequence_id field (or none) of the n-th Flushed or Cleared in the given form."""
    values: dict[str, object] = {
        "count": n,
        "null": None,
        "string": str(n),
        "float": float(n),
        "bool": n % 2 == 1,
        "constant": 0,
        "one_based": n + 1,
    }
    if form == "absent":
        return {}
    if form not in values:
        raise ValueError(f"unknown sequence_id form {form!r}; one of {SEQUENCE_ID_FORMS}")
    return {"sequence_id": values[form]}


def close_reason(code: str, style: str) -> str:
    """The reason a close frame carries for a Deepgram code, in the given style."""
    if style == "prose" and code in PROSE:
        return f"{PROSE[code]}. See https://dpgr.am/{code.replace('-', '').lower()}"
    return code


@dataclass
class FakeDeepgramOptions:
    """How the fake behaves. Handshake checks read it live; a connection copies it when accepted."""

    api_key: str = "test-key"
    first_byte_s: float = 0.1  # from Flush to the first audio frame
    pace: float = 0.0  # 0: as fast as possible; 1.0: real time; 2.0: twice real time
    lifetime_s: float = 3600.0  # then close 1011 NET-0003
    idle_timeout_s: float | None = None  # no client message for this long: close 1011 NET-0001
    chars_per_minute: int = 2400  # Speak characters in the sliding window; beyond: 1008 DATA-0001
    max_speak_chars: int = 2000  # a longer Speak text: 1009 BIG-0001
    max_message_bytes: int = 1 << 20  # a larger text frame: 1009 BIG-0000
    flushes_per_minute: int = 20  # beyond: EXCESSIVE_FLUSH warning, flush ignored
    window_s: float = 60.0  # the sliding window of both limits above
    accept_reset: bool = False  # False: Reset closes 1008 DATA-0000; True: Clear without an ack
    handshake_status: int | None = None  # refuse every handshake with this HTTP status
    max_connections: int | None = None  # concurrent sockets; beyond: HTTP 429
    chunk_ms: int = 20  # audio frame length
    round_trip_s: float = 0.0  # simulated network round trip; the handshake costs three
    clear_latency_s: float = 0.0  # how long audio keeps flowing after a Clear arrives
    seconds_per_char: float = 0.06
    spec_warning_fields: bool = (
        False  # send Warning as code/description (spec) not warn_code/warn_msg
    )
    error_frames: bool = False  # send an Error JSON frame (err_code/err_msg) before an error close
    sequence_ids: str = "count"  # the form of sequence_id: one of SEQUENCE_ID_FORMS
    cleared_flushed: str = "none"  # a Flush cut by Clear is answered: one of CLEARED_FLUSHED
    stale_flushed_delay_s: float = 0.0  # with "after": how long after Cleared that Flushed comes
    reason_style: str = "code"  # close reasons: "code" ("NET-0001") or "prose" (code in a link)
    idle_close_code: int = 1011  # 1011 NET-0001; or 1000 with no reason, a normal close
    valid_models: set[str] = field(
        default_factory=lambda: {"aura-2-thalia-en", "aura-2-andromeda-en", DEFAULT_MODEL}
    )
    sample_rates: set[int] = field(default_factory=lambda: {8000, 16000, 24000, 32000, 48000})


class ReceivedMessage(TypedDict):
    """One frame a client sent: `message` is the parsed JSON (None if unparsable or binary)."""

    connection: int
    at: float
    message: Any
    raw: str | bytes


# --- audio: pure functions the tests share ------------------------------------------------------


def tone_hz(text: str) -> float:
    """The pitch the fake speaks `text` at: 300..899 Hz, a fixed function of the text."""
    return 300.0 + zlib.crc32(text.encode()) % 600


def seconds_for(text: str, seconds_per_char: float = 0.06) -> float:
    """How long the fake's audio for `text` lasts (at speed 1.0)."""
    return max(0.2, seconds_per_char * len(text))


def utterance_samples(
    text: str, rate: int, seconds_per_char: float = 0.06, speed: float = 1.0
) -> int:
    return round(seconds_for(text, seconds_per_char) / speed * rate)


def tone_chunk(hz: float, rate: int, start: int, count: int) -> bytes:
    """Samples [start, start+count) of a sine at `hz` as linear16 little-endian mono."""
    n = np.arange(start, start + count, dtype=np.float64)
    wave = AMPLITUDE * 32767.0 * np.sin(2.0 * np.pi * hz * n / rate)
    return np.round(wave).astype("<i2").tobytes()


def synthesize(text: str, rate: int, seconds_per_char: float = 0.06, speed: float = 1.0) -> bytes:
    """All the audio the fake streams for one flush of `text`, byte for byte."""
    count = utterance_samples(text, rate, seconds_per_char, speed)
    return tone_chunk(tone_hz(text), rate, 0, count)


def pcm16(data: bytes) -> npt.NDArray[np.int16]:
    return np.frombuffer(data, dtype="<i2")


def dominant_hz(samples: npt.ArrayLike, rate: int) -> float:
    """The strongest frequency in `samples` (Hann-windowed FFT peak, parabolic refinement)."""
    x = np.asarray(samples, dtype=np.float64)
    if x.size < 4:
        raise ValueError("need at least 4 samples")
    spectrum = np.abs(np.fft.rfft((x - x.mean()) * np.hanning(x.size)))
    k = int(np.argmax(spectrum[1:])) + 1
    offset = 0.0
    if k < spectrum.size - 1:
        a, b, c = np.log(spectrum[k - 1 : k + 2] + 1e-12)
        denominator = a - 2.0 * b + c
        offset = 0.5 * (a - c) / denominator if denominator != 0 else 0.0
    return float((k + offset) * rate / x.size)


# --- audio on a socket: paced as the service sends it --------------------------------------------


async def send_tone(
    text: str,
    rate: int,
    send: Callable[[bytes, int], Awaitable[None]],
    *,
    chunk_ms: int,
    pace: float,
    seconds_per_char: float,
    speed: float = 1.0,
) -> float:
    """Send the text's tone in `chunk_ms` pieces, each with its index, paced (`pace` 0: as
    fast as possible; 1.0: real time); return its length in seconds."""
    hz, total = tone_hz(text), utterance_samples(text, rate, seconds_per_char, speed)
    step = max(1, rate * chunk_ms // 1000)
    interval = chunk_ms / 1000 / pace if pace > 0 else 0.0
    started = time.monotonic()
    for k, first in enumerate(range(0, total, step)):
        await sleep_until(started + k * interval)  # yields even when due, so a Clear gets in
        await send(tone_chunk(hz, rate, first, min(step, total - first)), k)
    return total / rate


# --- limits and handshake: pure ------------------------------------------------------------------


@dataclass
class SlidingWindow:
    """Amounts added over the last `span_s` seconds."""

    span_s: float
    _events: deque[tuple[float, int]] = field(default_factory=deque)
    _total: int = 0

    def total(self, now: float) -> int:
        while self._events and self._events[0][0] <= now - self.span_s:
            self._total -= self._events.popleft()[1]
        return self._total

    def add(self, now: float, amount: int) -> None:
        self.total(now)
        self._events.append((now, amount))
        self._total += amount


@dataclass(frozen=True)
class SpeakParams:
    """The query parameters of an accepted socket; fixed for its life."""

    model: str = DEFAULT_MODEL
    encoding: str = "linear16"
    sample_rate: int = DEFAULT_SAMPLE_RATE
    speed: float = 1.0


@dataclass(frozen=True)
class Refusal:
    status: int
    dg_error: str
    message: str


def refusal_for_status(status: int) -> Refusal:
    phrase = HTTPStatus(status).phrase
    return Refusal(status, DG_ERRORS.get(status, phrase.upper().replace(" ", "_")), phrase)


def check_handshake(
    options: FakeDeepgramOptions, path: str, authorization: str | None, open_sockets: int
) -> SpeakParams | Refusal:
    """What the live service answers to an upgrade request: the socket's parameters or a refusal."""
    if options.handshake_status is not None:
        return refusal_for_status(options.handshake_status)
    url = urlsplit(path)
    if url.path != SPEAK_PATH:
        return Refusal(404, "NOT_FOUND", f"no such endpoint: {url.path}")
    if authorization != f"Token {options.api_key}":
        return Refusal(401, "INVALID_AUTH", "Invalid credentials.")
    if options.max_connections is not None and open_sockets >= options.max_connections:
        return Refusal(429, "TOO_MANY_REQUESTS", "Too many concurrent requests.")
    return parse_query(options, url.query)


def parse_query(options: FakeDeepgramOptions, query: str) -> SpeakParams | Refusal:
    values = {key: found[-1] for key, found in parse_qs(query, keep_blank_values=True).items()}
    params = SpeakParams(
        model=values.get("model", DEFAULT_MODEL),
        encoding=values.get("encoding", "linear16"),
        sample_rate=_int_or(values.get("sample_rate"), DEFAULT_SAMPLE_RATE),
        speed=_float_or(values.get("speed"), 1.0),
    )
    if params.model not in options.valid_models:
        return Refusal(400, "UNKNOWN_MODEL", f"No such model: {params.model}")
    if params.encoding != "linear16":
        return Refusal(400, "UNSUPPORTED_ENCODING", f"Unsupported encoding: {params.encoding}")
    if params.sample_rate not in options.sample_rates:
        return Refusal(400, "UNSUPPORTED_SAMPLE_RATE", f"Bad sample_rate: {values['sample_rate']}")
    if not 0.7 <= params.speed <= 1.5:
        return Refusal(400, "INVALID_QUERY_PARAMETER", "speed must be within 0.7..1.5")
    if values.get("mip_opt_out", "false") not in ("true", "false"):
        return Refusal(400, "INVALID_QUERY_PARAMETER", "mip_opt_out must be true or false")
    return params


def _int_or(text: str | None, default: int) -> int:
    if text is None:
        return default
    return int(text) if text.isdigit() else -1


def _float_or(text: str | None, default: float) -> float:
    if text is None:
        return default
    try:
        return float(text)
    except ValueError:
        return math.nan


# --- one socket ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Accepted:
    params: SpeakParams
    request_id: str


@dataclass(frozen=True)
class _Job:
    """One flush: the utterance's text, its sequence id, when its first byte is due."""

    text: str
    sequence_id: int
    ready_at: float


class _Session:
    """One accepted socket: a reader, a speaker (one flush at a time) and a watchdog."""

    def __init__(
        self, server: FakeDeepgram, ws: ServerConnection, index: int, accepted: _Accepted
    ) -> None:
        self.server = server
        self.ws = ws
        self.index = index
        self.accepted = accepted
        self.options = dataclasses.replace(server.options)
        self._chars = SlidingWindow(self.options.window_s)
        self._flushes = SlidingWindow(self.options.window_s)
        self._text: list[str] = []
        self._jobs: asyncio.Queue[_Job | None] = asyncio.Queue()  # None: Close was received
        self._flush_seq = 0
        self._clear_seq = 0
        self._speaking: _Job | None = None  # the flush whose audio is going out
        self._stragglers: set[asyncio.Task[None]] = set()  # late Flushed of cut Flushes
        self._opened = self._last_message = time.monotonic()
        self._closing = False
        self._finishing = False  # Close received: no idle timeout while pending audio goes out
        self._speaker: asyncio.Task[None] | None = None

    async def run(self) -> None:
        """Serve until the socket is closed by anyone, then cancel and await every helper task."""
        with contextlib.suppress(ConnectionClosed):  # then the reader sees the close too
            await self._send_json(self._metadata())  # Metadata always comes first.
        reader = asyncio.create_task(self._read_loop(), name=f"fake-dg-{self.index}-reader")
        watchdog = asyncio.create_task(self._watch(), name=f"fake-dg-{self.index}-watchdog")
        self._start_speaker()
        try:
            await self.ws.wait_closed()
        finally:
            await reap([reader, watchdog, self._speaker, *self._stragglers])

    async def close(self, code: int, reason: str) -> None:
        if self._closing:
            return
        self._closing = True
        self.server.log_close(code, reason)
        said = close_reason(reason, self.options.reason_style)
        if self.options.error_frames and code != 1000:
            with contextlib.suppress(ConnectionClosed):
                await self._send_json({"type": "Error", "err_code": reason, "err_msg": said})
        await self.ws.close(code, said)

    def _metadata(self) -> JsonObject:
        model = self.accepted.params.model
        return {
            "type": "Metadata",
            "request_id": self.accepted.request_id,
            "model_name": model,
            "model_version": "fake",
            "model_uuid": str(uuid.uuid5(uuid.NAMESPACE_URL, model)),
        }

    async def _send_json(self, message: JsonObject) -> None:
        self.server.sent.append((self.index, message))
        await self.ws.send(json.dumps(message))

    # reading

    async def _read_loop(self) -> None:
        with contextlib.suppress(ConnectionClosed):
            while await self._dispatch(await self.ws.recv()):
                pass

    async def _dispatch(self, frame: str | bytes) -> bool:
        """Act on one client frame; False when the socket is closing and reading should stop."""
        self._last_message = time.monotonic()
        message = parse_object(frame) if isinstance(frame, str) else None
        received = ReceivedMessage(
            connection=self.index, at=self._last_message, message=message, raw=frame
        )
        self.server._record(received)
        if isinstance(frame, bytes):
            return await self._refuse(1003, "MESSAGE-0000")
        if len(frame.encode()) > self.options.max_message_bytes:
            return await self._refuse(1009, "BIG-0000")
        handlers: dict[Any, Callable[[JsonObject], Awaitable[bool]]] = {
            "Speak": self._on_speak,
            "Flush": self._on_flush,
            "Clear": self._on_clear,
            "Close": self._on_close,
        }
        if self.options.accept_reset:
            handlers["Reset"] = self._on_reset
        handler = handlers.get(message.get("type")) if message is not None else None
        if message is None or handler is None:
            return await self._refuse(1008, "DATA-0000")
        return await handler(message)

    async def _refuse(self, code: int, reason: str) -> bool:
        await self.close(code, reason)
        return False

    async def _on_speak(self, message: JsonObject) -> bool:
        text = message.get("text")
        if not isinstance(text, str):
            return await self._refuse(1008, "DATA-0000")
        if len(text) > self.options.max_speak_chars:
            return await self._refuse(1009, "BIG-0001")
        now = time.monotonic()
        in_window = self._chars.total(now) + len(text)
        self.server.max_chars_in_window_seen = max(self.server.max_chars_in_window_seen, in_window)
        if in_window > self.options.chars_per_minute:
            return await self._refuse(1008, "DATA-0001")
        self._chars.add(now, len(text))
        self.server.speak_chars_total += len(text)
        self._text.append(text)
        return True

    async def _on_flush(self, message: JsonObject) -> bool:
        now = time.monotonic()
        if self._flushes.total(now) >= self.options.flushes_per_minute:
            await self._warn(
                "EXCESSIVE_FLUSH", "Too many Flush messages in the last minute; ignored."
            )
            return True
        self._flushes.add(now, 1)
        self._enqueue_buffered(now)
        return True

    async def _on_clear(self, message: JsonObject) -> bool:
        cut = await self._stop_audio()
        if self.options.cleared_flushed == "before":
            for job in cut:
                await self._send_flushed(job)
        # Cleared goes out only after the speaker has stopped: no audio of the old text follows it.
        await self._send_json({"type": "Cleared", **self._sequence(self._clear_seq)})
        self._clear_seq += 1
        if self.options.cleared_flushed == "after" and cut:
            task = asyncio.create_task(
                self._send_flushed_later(cut), name=f"fake-dg-{self.index}-straggler"
            )
            self._stragglers.add(task)
            task.add_done_callback(self._stragglers.discard)
        return True

    async def _send_flushed_later(self, cut: list[_Job]) -> None:
        with contextlib.suppress(ConnectionClosed):
            await asyncio.sleep(self.options.stale_flushed_delay_s)
            for job in cut:
                await self._send_flushed(job)

    def _sequence(self, n: int) -> JsonObject:
        return sequence_field(self.options.sequence_ids, n)

    async def _send_flushed(self, job: _Job) -> None:
        await self._send_json({"type": "Flushed", **self._sequence(job.sequence_id)})

    async def _on_reset(self, message: JsonObject) -> bool:
        await self._stop_audio()  # the seed spec's Reset: like Clear, but no acknowledgement
        return True

    async def _on_close(self, message: JsonObject) -> bool:
        self._finishing = True
        if self._text:  # Close finalizes synthesis: buffered text is spoken too
            self._enqueue_buffered(time.monotonic())
        self._jobs.put_nowait(None)
        return False

    async def _warn(self, code: str, text: str) -> None:
        keys = (
            ("code", "description")
            if self.options.spec_warning_fields
            else ("warn_code", "warn_msg")
        )
        await self._send_json({"type": "Warning", keys[0]: code, keys[1]: text})

    def _enqueue_buffered(self, now: float) -> None:
        job = _Job("".join(self._text), self._flush_seq, now + self.options.first_byte_s)
        self._text.clear()
        self._flush_seq += 1
        self._jobs.put_nowait(job)

    # speaking

    def _start_speaker(self) -> None:
        self._speaker = asyncio.create_task(
            self._speak_loop(), name=f"fake-dg-{self.index}-speaker"
        )

    async def _stop_audio(self) -> list[_Job]:
        """Drop buffered text, pending flushes and the audio being sent, then start afresh;
        returns the flushes cut short, in order."""
        if self.options.clear_latency_s > 0:
            await asyncio.sleep(self.options.clear_latency_s)
        await reap([self._speaker])
        cut = [self._speaking] if self._speaking is not None else []
        self._speaking = None
        self._text.clear()
        while not self._jobs.empty():
            if (job := self._jobs.get_nowait()) is not None:
                cut.append(job)
        self._start_speaker()
        return cut

    async def _speak_loop(self) -> None:
        with contextlib.suppress(ConnectionClosed):
            while (job := await self._jobs.get()) is not None:
                self._speaking = job
                await sleep_until(job.ready_at)
                if job.text.strip():
                    await self._stream(job.text)
                # Flushed follows the last audio frame of its flush.
                await self._send_flushed(job)
                self._speaking = None
            await self.close(1000, "")

    async def _stream(self, text: str) -> None:
        await send_tone(
            text,
            self.accepted.params.sample_rate,
            lambda chunk, _: self.ws.send(chunk),
            chunk_ms=self.options.chunk_ms,
            pace=self.options.pace,
            seconds_per_char=self.options.seconds_per_char,
            speed=self.accepted.params.speed,
        )

    # timers

    async def _watch(self) -> None:
        lifetime_end = self._opened + self.options.lifetime_s
        while True:
            now = time.monotonic()
            if now >= lifetime_end:
                await self.close(1011, "NET-0003")
                return
            idle_end = self._idle_deadline()
            if now >= idle_end:
                code = self.options.idle_close_code
                self.server.idle_closes += 1
                await self.close(code, "" if code == 1000 else "NET-0001")
                return
            await asyncio.sleep(min(lifetime_end, idle_end) - now)

    def _idle_deadline(self) -> float:
        if self.options.idle_timeout_s is None or self._finishing:
            return math.inf
        return self._last_message + self.options.idle_timeout_s


def _check_forms(options: FakeDeepgramOptions) -> None:
    for value, allowed in (
        (options.sequence_ids, SEQUENCE_ID_FORMS),
        (options.cleared_flushed, CLEARED_FLUSHED),
        (options.reason_style, REASON_STYLES),
    ):
        if value not in allowed:
            raise ValueError(f"{value!r} is not one of {allowed}")


# --- the server ----------------------------------------------------------------------------------


class FakeDeepgram(FakeServer):
    """The fake service on 127.0.0.1; counters and logs are plain attributes for tests to read."""

    path = SPEAK_PATH
    open_timeout = 60

    def __init__(
        self, options: FakeDeepgramOptions | None = None, *, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        super().__init__(host, port)
        self.options = options if options is not None else FakeDeepgramOptions()
        _check_forms(self.options)
        self.refusals: list[tuple[int, str]] = []  # HTTP status and dg-error of each refusal
        self.idle_closes = 0  # sockets closed for idleness, with either code
        self.received: list[ReceivedMessage] = []
        self.speak_chars_total = 0
        self.max_chars_in_window_seen = 0  # includes a Speak that broke the limit
        self._accepted: weakref.WeakKeyDictionary[ServerConnection, _Accepted] = (
            weakref.WeakKeyDictionary()
        )

    def set_handshake_status(self, status: int | None) -> None:
        self.options.handshake_status = status

    # hooks

    async def _process_request(
        self, connection: ServerConnection, request: Request
    ) -> Response | None:
        if self.options.round_trip_s > 0:  # TCP + TLS + upgrade: three round trips
            await asyncio.sleep(3 * self.options.round_trip_s)
        verdict = check_handshake(
            self.options, request.path, request.headers.get("Authorization"), len(self._sessions)
        )
        if isinstance(verdict, SpeakParams):
            self._accepted[connection] = _Accepted(verdict, str(uuid.uuid4()))
            return None
        return self._refuse(connection, verdict)

    def _process_response(
        self, connection: ServerConnection, request: Request, response: Response
    ) -> None:
        accepted = self._accepted.get(connection)
        if accepted is not None:
            response.headers["dg-request-id"] = accepted.request_id

    def _refuse(self, connection: ServerConnection, refusal: Refusal) -> Response:
        request_id = str(uuid.uuid4())
        body = {"err_code": refusal.dg_error, "err_msg": refusal.message, "request_id": request_id}
        self.refusals.append((refusal.status, refusal.dg_error))
        response = self.refuse(connection, refusal.status, json.dumps(body))
        del response.headers["Content-Type"]
        response.headers["Content-Type"] = "application/json"
        response.headers["dg-error"] = refusal.dg_error
        response.headers["dg-request-id"] = request_id
        return response

    def _session(self, ws: ServerConnection, index: int) -> _Session:
        return _Session(self, ws, index, self._accepted.pop(ws))

    def _record(self, message: ReceivedMessage) -> None:
        self.received.append(message)
        self.notify()


# --- command line --------------------------------------------------------------------------------


def _parse_args(argv: Sequence[str] | None) -> tuple[FakeDeepgramOptions, str, int]:
    """Every scalar option is a flag (`--first-byte-s`); `--*-ms` spell the two delays in ms."""
    options, host, port, _ = _parse_command_line(argv)
    return options, host, port


def _parse_command_line(
    argv: Sequence[str] | None,
) -> tuple[FakeDeepgramOptions, str, int, bool]:
    """The options, host and port, and whether to obey commands on stdin (`--control`)."""
    parser = argparse.ArgumentParser(description="Run the fake Deepgram Aura TTS server.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument(
        "--control",
        action="store_true",
        help="obey commands on stdin: kill, close CODE [REASON], refuse STATUS, accept, stats",
    )
    parser.add_argument("--first-byte-ms", type=float)
    parser.add_argument("--round-trip-ms", type=float)
    hints = get_type_hints(FakeDeepgramOptions)
    names = [option.name for option in dataclasses.fields(FakeDeepgramOptions)]
    for name in names:
        kind = _scalar_type(hints[name])
        flag = "--" + name.replace("_", "-")
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction)
        elif kind is not None:
            parser.add_argument(flag, type=kind)
    args = vars(parser.parse_args(argv))
    options = FakeDeepgramOptions(
        **{name: args[name] for name in names if args.get(name) is not None}
    )
    if args["first_byte_ms"] is not None:
        options.first_byte_s = args["first_byte_ms"] / 1000
    if args["round_trip_ms"] is not None:
        options.round_trip_s = args["round_trip_ms"] / 1000
    return options, args["host"], args["port"], args["control"]


def _scalar_type(hint: object) -> type | None:
    """`int`, `float`, `str` or `bool` for a field of that type (or that type or None)."""
    for kind in (bool, int, float, str):
        if hint is kind or (isinstance(hint, UnionType) and kind in get_args(hint)):
            return kind
    return None


async def obey(server: FakeDeepgram, line: str) -> JsonObject:
    """Carry out one control command; the answer says what was done and what the fake saw.

    `kill`: drop every connection without a close frame; `close CODE [REASON]`: close every
    socket with that code; `refuse STATUS`: refuse every handshake with that HTTP status;
    `accept`: stop refusing; `stats`: only the answer.
    """
    words = line.split()
    affected = server.open_connections
    match words:
        case ["kill"]:
            await server.kill_all()
        case ["close", code, *reason] if code.isdigit():
            await server.close_all(int(code), " ".join(reason))
        case ["refuse", status] if status.isdigit():
            server.set_handshake_status(int(status))
        case ["accept"]:
            server.set_handshake_status(None)
        case ["stats"]:
            pass
        case _:
            return {"error": f"unknown command: {line.strip()!r}"}
    return {
        "done": words[0],
        "affected": affected,
        "connections": server.connections,
        "open": server.open_connections,
        "refused": server.refused,
    }


async def _obey_stdin(server: FakeDeepgram) -> None:
    """Read commands from stdin until it ends; answer each with one JSON line on stdout."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        try:
            answer = await obey(server, line.decode())
        except Exception as exc:  # e.g. a kill that did not complete in time: say so, go on
            answer = {"error": f"{type(exc).__name__}: {exc}"}
        print(json.dumps(answer), flush=True)


async def _serve_until_signalled(
    options: FakeDeepgramOptions, host: str, port: int, control: bool = False
) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    async with FakeDeepgram(options, host=host, port=port) as server:
        print(server.url, flush=True)
        commands = asyncio.create_task(_obey_stdin(server)) if control else None
        await stop.wait()
        await reap([commands])


def main(argv: Sequence[str] | None = None) -> None:
    options, host, port, control = _parse_command_line(argv)
    asyncio.run(_serve_until_signalled(options, host, port, control))


if __name__ == "__main__":
    main()
