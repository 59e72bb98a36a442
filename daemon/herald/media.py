"""Media from a URL as samples: what Home Assistant asks a media player to play as an
announcement, downloaded over HTTP(S) and decoded as it arrives.

Only WAV is decoded (RIFF or RF64; integer PCM of 8, 16, 24 or 32 bits, or float of 32 or 64
bits; 1 to 8 channels; any rate): Home Assistant's ESPHome integration converts other media to
WAV with ffmpeg before it hands the player a URL, so anything else is refused with a reason.

A URL from Home Assistant may carry a signed token in its query string (`?authSig=...`) or a
password in its userinfo, and Home Assistant's proxy a token in its path: none of them ever
appears in an error message or a log line. `where_host(url)`, scheme://host[:port], is the form
every message uses.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import struct
import urllib.parse
from collections.abc import AsyncGenerator, Awaitable
from dataclasses import dataclass
from typing import TypeVar

import httpx
import numpy as np
import numpy.typing as npt

from herald import __version__
from herald.audio.dsp import Samples, StreamResampler, silence
from herald.logsafe import shown, where_host
from herald.voice.base import VoiceError

log = logging.getLogger(__name__)

# httpx logs every request's full URL (query string included) at INFO: keep it to warnings, as a
# signed token must not reach the journal.
logging.getLogger("httpx").setLevel(logging.WARNING)

MAX_REDIRECTS = 5
CONNECT_TIMEOUT_S = 10.0
MAX_CHANNELS = 8
MIN_RATE, MAX_RATE = 1000, 768000  # sample rates a WAV may declare
MAX_FMT_BYTES = 1024  # a fmt chunk is 16 to 40 bytes; a larger one is not a WAV we can play

MAGICS = (b"RIFF", b"RF64")
UNTIL_END = (0, 0xFFFFFFFF)  # data sizes that mean "the data runs to the end of the body"
PCM, IEEE_FLOAT, EXTENSIBLE = 0x0001, 0x0003, 0xFFFE

T = TypeVar("T")


class MediaError(VoiceError):
    """The media cannot be played: a one-line reason naming what was wrong (never the URL's
    query string or userinfo: Home Assistant's URLs can carry signed tokens)."""


async def stream_media(
    url: str, rate: int, *, max_bytes: int, timeout_s: float, chunk_ms: int = 40
) -> AsyncGenerator[Samples, None]:
    """The audio at `url` as mono int16 samples at `rate`, yielded as it downloads (the first
    samples long before a long file has arrived), in pieces of about chunk_ms.

    At most `max_bytes` of body are read (a Content-Length above it is refused before any is).
    `timeout_s` caps the time spent waiting on the server, from the request to the last byte;
    the time the caller takes between pieces (playing them, say) does not count, so a long file
    played as it arrives is not cut short. MediaError says why the media cannot be played;
    samples already yielded stay valid. Close the generator (contextlib.aclosing) to stop early:
    the connection closes with it.
    """
    place = _checked(url)
    wait = _Waiter(timeout_s, place)
    piece_frames = max(1, rate * chunk_ms // 1000)
    async with httpx.AsyncClient(
        follow_redirects=True,
        max_redirects=MAX_REDIRECTS,
        timeout=httpx.Timeout(None, connect=CONNECT_TIMEOUT_S),  # and _Waiter caps the whole
        trust_env=False,  # no proxy or .netrc from the environment: Home Assistant is local
        headers={
            "User-Agent": f"Herald/{__version__}",
            "Accept": "audio/wav, audio/x-wav, audio/*;q=0.5, */*;q=0.1",
            "Accept-Encoding": "identity",
        },
    ) as client:
        try:
            request = client.build_request("GET", url)
            response = await wait(client.send(request, stream=True))
        except httpx.InvalidURL as exc:
            raise MediaError(f"invalid URL {place}: {_short(exc)}") from None
        except httpx.HTTPError as exc:
            raise MediaError(_failure(exc, place)) from None
        try:
            place = where_host(str(response.url))  # after redirects, the place that answered
            wait.place = place
            decoder = _accepted(response, place, rate, max_bytes)
            pieces = _Pieces(piece_frames)
            received = 0
            chunks = response.aiter_raw()
            while not decoder.done:
                try:
                    data = await wait(anext(chunks))
                except StopAsyncIteration:
                    break
                except httpx.HTTPError as exc:
                    raise MediaError(_failure(exc, place)) from None
                received += len(data)
                if received > max_bytes:
                    raise MediaError(
                        f"the media from {place} is too large: more than the {max_bytes} bytes"
                        " allowed"
                    )
                for piece in pieces.add(decoder.feed(data)):
                    yield piece
            log.debug("media from %s: %d bytes read", place, received)
            for piece in pieces.add(decoder.finish()):
                yield piece
            last = pieces.rest()
            if last.size:
                yield last
        finally:
            await response.aclose()


def _checked(url: str) -> str:
    """where_host(url), once the URL is one Herald may fetch: http or https, with a host."""
    place = where_host(url)
    try:
        parts = urllib.parse.urlsplit(url.strip())
    except ValueError:
        raise MediaError(f"invalid URL {place}") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        shown_scheme = shown(scheme, 20) if scheme else "none"
        raise MediaError(
            f"unsupported URL scheme {shown_scheme!r} in {place}: only http and https media"
            " can be played"
        )
    if not parts.netloc.rpartition("@")[2]:
        raise MediaError(f"invalid URL {place}: no host")
    return place


def _accepted(response: httpx.Response, place: str, rate: int, max_bytes: int) -> WavDecoder:
    """A decoder for the body, once the status and headers allow it."""
    status = response.status_code
    if status >= 400:
        raise MediaError(f"HTTP {status} from {place}")
    if status >= 300:  # a redirect httpx did not follow: no Location, or 304
        raise MediaError(f"HTTP {status} from {place}: a redirect without a place to go")
    encoding = response.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise MediaError(
            f"the media from {place} is compressed ({shown(encoding, 30)}), which Herald"
            " does not decode"
        )
    length = response.headers.get("content-length", "")
    if length.strip().isdigit() and int(length) > max_bytes:
        raise MediaError(
            f"the media from {place} is too large: {int(length)} bytes, more than the"
            f" {max_bytes} allowed"
        )
    return WavDecoder(rate, origin=place, content_type=response.headers.get("content-type", ""))


class _Waiter:
    """Awaits network steps against one budget of time, spent only while awaiting (never
    across a yield, where an asyncio.timeout would cancel whatever the caller is doing)."""

    def __init__(self, budget_s: float, place: str) -> None:
        self.budget_s = budget_s
        self.left = budget_s
        self.place = place

    async def __call__(self, step: Awaitable[T]) -> T:
        loop = asyncio.get_running_loop()
        start = loop.time()
        deadline = asyncio.timeout(max(self.left, 0.0))
        try:
            async with deadline:
                return await step
        except TimeoutError:
            if not deadline.expired():  # not ours: httpx reports its own timeouts as httpx's
                raise MediaError(
                    f"the download from {self.place} broke off: TimeoutError"
                ) from None
            raise MediaError(
                f"timed out: the media from {self.place} did not arrive within {self.budget_s:g} s"
            ) from None
        finally:
            self.left -= loop.time() - start


def _failure(exc: httpx.HTTPError, place: str) -> str:
    """One line for a failed request or download, naming the host and what went wrong."""
    with contextlib.suppress(RuntimeError):  # RuntimeError: raised before any request
        place = where_host(str(exc.request.url))  # the hop that failed, after any redirect
    if isinstance(exc, httpx.TooManyRedirects):
        return f"too many redirects (more than {MAX_REDIRECTS}) from {place}"
    if isinstance(exc, httpx.UnsupportedProtocol):
        return f"{place} redirects to an unsupported scheme: only http and https can be played"
    if isinstance(exc, httpx.ConnectTimeout):
        return f"cannot connect to {place}: no answer within the connect timeout"
    if isinstance(exc, httpx.ConnectError):
        return f"cannot connect to {place}: {_short(exc)}"
    if isinstance(exc, httpx.TimeoutException | httpx.NetworkError | httpx.ProtocolError):
        return f"the download from {place} broke off: {_short(exc)}"
    return f"cannot fetch {place}: {_short(exc)}"


_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://\S+")


def _short(exc: BaseException) -> str:
    """The error's class and message, on one line, with any URL in it cut to its host."""
    text = _URL.sub(lambda match: where_host(match.group(0).rstrip("'\".,)")), str(exc))
    name = type(exc).__name__
    return shown(f"{name}: {text}" if text else name, 120)


class _Pieces:
    """Cuts a stream of sample arrays into pieces of `frames` samples."""

    def __init__(self, frames: int) -> None:
        self._frames = frames
        self._held: list[Samples] = []
        self._count = 0

    def add(self, samples: Samples) -> list[Samples]:
        if samples.size == 0:
            return []
        self._held.append(samples)
        self._count += samples.size
        if self._count < self._frames:
            return []
        joined = np.concatenate(self._held)
        whole = self._count - self._count % self._frames
        pieces = [joined[i : i + self._frames] for i in range(0, whole, self._frames)]
        left = joined[whole:]
        self._held = [left] if left.size else []
        self._count = left.size
        return pieces

    def rest(self) -> Samples:
        rest = np.concatenate(self._held) if self._held else silence(0)
        self._held, self._count = [], 0
        return rest


@dataclass(frozen=True)
class WavFormat:
    tag: int  # PCM or IEEE_FLOAT (an EXTENSIBLE fmt says which)
    channels: int
    rate: int
    bits: int  # the container's bits per sample

    @property
    def frame_bytes(self) -> int:
        return self.channels * self.bits // 8

    def describe(self) -> str:
        kind = "float" if self.tag == IEEE_FLOAT else "PCM"
        return f"{self.bits}-bit {kind}, {self.channels} ch, {self.rate} Hz"


class WavDecoder:
    """A WAV file, fed in pieces of any size as they arrive, as mono int16 samples at `rate`.

    `feed` returns the samples the bytes so far complete (none until the data chunk starts);
    `finish`, after the last piece, returns what the resampler held back, or raises MediaError
    when the body ended before the audio began. `done`: the data chunk is complete, and the
    rest of the body is not needed. Memory stays at about one piece: the header is kept until
    it is whole, then at most one frame's bytes between pieces.
    """

    def __init__(self, rate: int, *, origin: str = "the media", content_type: str = "") -> None:
        self._rate = rate
        self._origin = origin
        self._content_type = content_type
        self._rest = b""  # bytes not yet used: part of a header, or part of a frame
        self._seen = 0  # bytes of the body so far
        self._state = "riff"  # riff, chunk, skip, data, done
        self._rf64 = False
        self._rf64_data_size: int | None = None
        self._skip = 0  # bytes of an unwanted chunk still to pass over
        self._data_left: int | None = None  # None: the data runs to the end of the body
        self._format: WavFormat | None = None
        self._resampler: StreamResampler | None = None

    @property
    def done(self) -> bool:
        return self._state == "done"

    @property
    def format(self) -> WavFormat | None:
        return self._format

    def feed(self, data: bytes) -> Samples:
        self._seen += len(data)
        if self._state == "done":
            return silence(0)
        if self._state == "data":
            return self._audio(data)
        buf = self._rest + data if self._rest else data
        pos = 0
        while self._state != "data":
            used = self._step(buf, pos)
            if used is None:  # more bytes needed
                self._rest = buf[pos:]
                return silence(0)
            pos = used
            if self._state == "done":
                self._rest = b""
                return silence(0)
        self._rest = b""
        return self._audio(buf[pos:])

    def finish(self) -> Samples:
        if self._state in ("riff", "chunk", "skip"):
            raise MediaError(self._why_no_audio())
        self._state = "done"
        self._rest = b""
        if self._data_left:
            log.debug("the data chunk of %s ended %d bytes early", self._origin, self._data_left)
        if self._resampler is None:
            return silence(0)
        return self._resampler.flush()

    # --- the header --------------------------------------------------------------------------

    def _step(self, buf: bytes, pos: int) -> int | None:
        """One step through the header from `pos`: the position after it, or None to wait."""
        have = len(buf) - pos
        if self._state == "riff":
            if have >= 4 and buf[pos : pos + 4] not in MAGICS:
                raise MediaError(self._not_wav(buf[pos:]))
            if have < 12:
                return None
            if buf[pos + 8 : pos + 12] != b"WAVE":
                raise MediaError(self._not_wav(buf[pos:]))
            self._rf64 = buf[pos : pos + 4] == b"RF64"
            self._state = "chunk"
            return pos + 12
        if self._state == "skip":
            passed = min(self._skip, have)
            self._skip -= passed
            if self._skip:
                return None if passed == 0 else pos + passed
            self._state = "chunk"
            return pos + passed
        # "chunk": an 8-byte chunk header, and for fmt and ds64 their whole body
        if have < 8:
            return None
        chunk_id = buf[pos : pos + 4]
        size: int = struct.unpack_from("<I", buf, pos + 4)[0]
        body = pos + 8
        if chunk_id == b"data":
            return self._start_data(size, body)
        if chunk_id in (b"fmt ", b"ds64"):
            if size > MAX_FMT_BYTES:
                raise MediaError(
                    f"broken WAV: the {chunk_id.decode().strip()} chunk of {self._origin} is"
                    f" {size} bytes long"
                )
            if len(buf) - body < size:
                return None
            if chunk_id == b"fmt ":
                self._format = self._parsed_fmt(buf[body : body + size])
            elif self._rf64 and size >= 16:
                (self._rf64_data_size,) = struct.unpack_from("<Q", buf, body + 8)
            return body + size + (size & 1)
        self._skip = size + (size & 1)  # LIST, fact, JUNK, bext...: not needed
        self._state = "skip"
        return body

    def _start_data(self, size: int, body: int) -> int:
        if self._format is None:
            raise MediaError(f"broken WAV: the data of {self._origin} comes before its format")
        if self._rf64 and size == 0xFFFFFFFF and self._rf64_data_size:
            self._data_left = self._rf64_data_size
        else:
            self._data_left = None if size in UNTIL_END else size
        fmt = self._format
        self._resampler = StreamResampler(fmt.rate, self._rate)
        log.debug(
            "WAV from %s: %s, data %s",
            self._origin,
            fmt.describe(),
            "to the end" if self._data_left is None else f"{self._data_left} bytes",
        )
        self._state = "data" if self._data_left != 0 else "done"
        return body

    def _parsed_fmt(self, body: bytes) -> WavFormat:
        if len(body) < 16:
            raise MediaError(f"broken WAV: the fmt chunk of {self._origin} is cut short")
        tag, channels, rate, _, block_align, bits = struct.unpack_from("<HHIIHH", body)
        if tag == EXTENSIBLE and len(body) >= 26:
            (tag,) = struct.unpack_from("<H", body, 24)  # the sub-format GUID's first bytes
        integer = tag == PCM and bits in (8, 16, 24, 32)
        floating = tag == IEEE_FLOAT and bits in (32, 64)
        if not (integer or floating):
            kind = {PCM: "PCM", IEEE_FLOAT: "float"}.get(tag, f"format 0x{tag:04x}")
            raise MediaError(
                f"unsupported audio: {self._origin} is {bits}-bit {kind} WAV (Herald plays"
                " 8/16/24/32-bit PCM and 32/64-bit float)"
            )
        if not 1 <= channels <= MAX_CHANNELS:
            raise MediaError(
                f"unsupported audio: {self._origin} has {channels} channels"
                f" (Herald plays 1 to {MAX_CHANNELS})"
            )
        if not MIN_RATE <= rate <= MAX_RATE:
            raise MediaError(f"unsupported audio: {self._origin} has a rate of {rate} Hz")
        fmt = WavFormat(tag, channels, rate, bits)
        if block_align != fmt.frame_bytes:
            raise MediaError(
                f"broken WAV: {self._origin} says a frame is {block_align} bytes, not"
                f" {fmt.frame_bytes} ({fmt.describe()})"
            )
        return fmt

    # --- the audio ---------------------------------------------------------------------------

    def _audio(self, data: bytes) -> Samples:
        """The samples `data`, new bytes of the data chunk, complete with the frame held back."""
        if self._data_left is not None:
            data = data[: self._data_left]
            self._data_left -= len(data)
            if self._data_left == 0:
                self._state = "done"
        assert self._format is not None
        assert self._resampler is not None
        if self._rest:
            data = self._rest + data
        frame = self._format.frame_bytes
        usable = len(data) - len(data) % frame
        self._rest = data[usable:] if self._state == "data" else b""
        if usable == 0:
            return silence(0)
        return self._resampler.push(_mono16(data[:usable], self._format))

    # --- why it is not audio -----------------------------------------------------------------

    def _why_no_audio(self) -> str:
        if self._seen == 0:
            return f"unsupported audio: the response from {self._origin} is empty"
        start = self._rest[:4]
        if self._state == "riff" and not any(magic.startswith(start) for magic in MAGICS):
            return self._not_wav(self._rest)
        return (
            f"broken WAV: the header of {self._origin} is cut short (the body ended after"
            f" {self._seen} bytes, before the audio data)"
        )

    def _not_wav(self, start: bytes) -> str:
        what = _looks_like(start)
        content_type = self._content_type.split(";")[0].strip()
        if content_type:
            what += f", Content-Type {shown(content_type, 40)}"
        return (
            f"unsupported audio: {self._origin} is not WAV ({what}; Home Assistant converts to"
            " WAV for Herald)"
        )


def _looks_like(start: bytes) -> str:
    """What the first bytes of a body look like, in a few words (never the bytes of text)."""
    head = start[:16]
    if head[:3] == b"ID3":
        return "it starts like MP3"
    if len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0:
        return "it starts like AAC" if head[1] & 0xF6 == 0xF0 else "it starts like MP3"
    if head[:4] == b"fLaC":
        return "it starts like FLAC"
    if head[:4] == b"OggS":
        return "it starts like Ogg (Vorbis, Opus or FLAC)"
    if head[:4] == b"\x1aE\xdf\xa3":
        return "it starts like WebM/Matroska"
    if head[4:8] == b"ftyp":
        return "it starts like MP4/M4A"
    if head[:4] == b"FORM":
        return "it starts like AIFF"
    if head[:4] == b"RIFF":
        return "it is RIFF but not WAVE"
    text = head.lstrip().lower()
    if text.startswith((b"<!doctype html", b"<html", b"<head", b"<body")):
        return "it starts like an HTML page"
    if text.startswith(b"<"):
        return "it starts like HTML or XML"
    if text.startswith((b"{", b"[")):
        return "it starts like JSON"
    if head and all(32 <= byte < 127 or byte in b"\t\r\n" for byte in head):
        return "it starts like text"
    return f"its first bytes are {head[:4].hex(' ')}"


_SCALE = {1: 128.0, 2: 32768.0, 3: 8388608.0, 4: 2147483648.0}


def _mono16(data: bytes, fmt: WavFormat) -> Samples:
    """Whole frames of `fmt` as mono int16: the mean of the channels, rounded and clipped."""
    if fmt.tag == PCM and fmt.bits == 16 and fmt.channels == 1:
        return np.frombuffer(data, dtype="<i2").astype(np.int16)
    values: npt.NDArray[np.float64]
    if fmt.tag == IEEE_FLOAT:
        raw = np.frombuffer(data, dtype="<f4" if fmt.bits == 32 else "<f8")
        values = np.nan_to_num(raw.astype(np.float64), nan=0.0, posinf=1.0, neginf=-1.0)
    else:
        width = fmt.bits // 8
        if width == 1:
            ints = np.frombuffer(data, dtype=np.uint8).astype(np.int32) - 128
        elif width == 3:
            padded = np.zeros((len(data) // 3, 4), dtype=np.uint8)
            padded[:, 1:] = np.frombuffer(data, dtype=np.uint8).reshape(-1, 3)
            ints = padded.view("<i4").reshape(-1) >> 8  # sign-extended from the top byte
        else:
            ints = np.frombuffer(data, dtype="<i2" if width == 2 else "<i4")
        values = ints.astype(np.float64) / _SCALE[width]
    mono = values.reshape(-1, fmt.channels).mean(axis=1)
    out: Samples = np.clip(np.round(mono * 32768.0), -32768, 32767).astype(np.int16)
    return out
